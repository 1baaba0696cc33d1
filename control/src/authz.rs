//! Who may call what.
//!
//! Without mutual TLS the listener is the boundary: egret-control then
//! serves loopback only (unless told `--insecure-listen`), and every caller
//! may do everything. With mutual TLS a caller is the names its certificate
//! carries (DNS subject alternative names, then the common name), checked
//! by the TLS layer against the client CA:
//! - a gateway may subscribe only as a node its certificate names, so a
//!   compromised gateway cannot read another node's plan;
//! - the admin service (which shows every plan, session and pod) needs a
//!   name listed with `--admin-identity`.
//!
//! With `--gateway-auth=token` gateways present no certificate: each sends
//! its pod's bound ServiceAccount token, and may subscribe only as the node
//! that pod runs on ([`crate::token`]). Client certificates are then
//! optional at the TLS layer and open only the admin service.

use crate::token::TokenAuth;
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// How gateways prove which node they are.
#[derive(Debug, Clone, Default)]
enum Gateways {
    /// Anyone may subscribe as any node (no client certificates).
    #[default]
    Open,
    /// By the names of their client certificate.
    Certificate,
    /// By their pod's ServiceAccount token.
    Token(Arc<TokenAuth>),
}

#[derive(Debug, Clone, Default)]
pub struct Authz {
    /// Client certificates are checked by the TLS layer: admins are named
    /// by theirs.
    mutual_tls: bool,
    admins: Arc<BTreeSet<String>>,
    gateways: Gateways,
}

impl Authz {
    /// Everyone may do everything (no client certificates).
    pub fn open() -> Authz {
        Authz::default()
    }

    /// Mutual TLS: nodes by certificate name, admins from `admins`.
    pub fn mutual_tls(admins: impl IntoIterator<Item = String>) -> Authz {
        Authz { mutual_tls: true, admins: Arc::new(admins.into_iter().collect()), gateways: Gateways::Certificate }
    }

    /// Gateways by ServiceAccount token instead (admins as before).
    pub fn with_tokens(self, tokens: Arc<TokenAuth>) -> Authz {
        Authz { gateways: Gateways::Token(tokens), ..self }
    }

    /// May this caller subscribe to `node`'s plan?
    pub async fn check_node<T>(&self, req: &Request<T>, node: &str) -> Result<(), Status> {
        match &self.gateways {
            Gateways::Open => Ok(()),
            Gateways::Token(t) => t.check_node(req.metadata(), node).await.map(|_| ()),
            Gateways::Certificate => {
                let names = peer_names(req);
                if names.iter().any(|n| n == node) {
                    return Ok(());
                }
                Err(Status::permission_denied(format!(
                    "a gateway may read only its own node's plan: the client certificate names {}, not '{node}'",
                    list(&names)
                )))
            }
        }
    }

    /// May this caller use the admin service?
    pub fn check_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if !self.mutual_tls {
            return Ok(());
        }
        let names = peer_names(req);
        if names.iter().any(|n| self.admins.contains(n)) {
            return Ok(());
        }
        Err(Status::permission_denied(if self.admins.is_empty() {
            "admin calls are disabled: egret-control runs with mutual TLS and no --admin-identity".to_string()
        } else {
            format!(
                "admin calls need a client certificate naming an admin identity ({}); this one names {}",
                self.admins.iter().cloned().collect::<Vec<_>>().join(", "),
                list(&names)
            )
        }))
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// The names in the peer's (leaf) certificate: DNS SANs, then CNs.
pub fn peer_names<T>(req: &Request<T>) -> Vec<String> {
    let Some(certs) = req.peer_certs() else { return Vec::new() };
    let Some(leaf) = certs.first() else { return Vec::new() };
    certificate_names(leaf.as_ref())
}

pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            if !names.iter().any(|n| n == s) {
                names.push(s.to_string());
            }
        }
    }
    names
}
