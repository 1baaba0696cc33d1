//! The schema and its validation, as a gateway and egret-control see them.

mod plans {
    use crate::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn plan() -> Plan {
        Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![
                GatewayConfig::new("a", vec![cidr("198.19.100.0/28")]),
                GatewayConfig::new("b", vec![cidr("198.19.101.0/31"), cidr("198.19.102.7")]),
            ],
            bindings: vec![
                Binding { pod_ip: "198.18.0.2".parse().unwrap(), config: "a".into(), public_key: None },
                Binding { pod_ip: "198.18.0.3".parse().unwrap(), config: "b".into(), public_key: None },
            ]
            .into(),
        }
    }

    #[test]
    fn a_valid_plan_passes() {
        plan().validate().unwrap();
    }

    #[test]
    fn rejects_bad_cidrs_with_clear_errors() {
        assert_eq!(
            "198.19.100.1/28".parse::<Ipv4Cidr>().unwrap_err().to_string(),
            "invalid CIDR '198.19.100.1/28': host bits set"
        );
        assert!("198.19.100.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("banana/8".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn rejects_invalid_plans_whole() {
        let mut p = plan();
        p.configs[1].egress.push(cidr("198.19.100.8/29"));
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "egress address 198.19.100.8 is in the pools of both 'a' and 'b'"
        );

        let mut p = plan();
        p.bindings.make_mut().push(Binding {
            pod_ip: "198.18.0.9".parse().unwrap(),
            config: "zz".into(),
            public_key: None,
        });
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "pod 198.18.0.9 is bound to config 'zz', which does not exist"
        );

        let mut p = plan();
        p.bindings.make_mut().push(Binding {
            pod_ip: "198.18.0.2".parse().unwrap(),
            config: "b".into(),
            public_key: None,
        });
        assert!(matches!(p.validate(), Err(PlanError::DuplicateBinding { .. })));

        let mut p = plan();
        p.configs[0].timeouts.udp = 0;
        assert!(matches!(p.validate(), Err(PlanError::BadTimeout { field: "udp", .. })));

        let mut p = plan();
        p.configs.push(GatewayConfig::new("a", vec![cidr("198.19.110.0/30")]));
        assert_eq!(p.validate().unwrap_err(), PlanError::DuplicateConfig("a".into()));

        let mut p = plan();
        p.configs[0].filtering = FilteringMode::EndpointIndependent;
        p.configs[0].mapping = MappingMode::PortReuse;
        assert!(p.validate().is_err());
    }
}

mod sources {
    use crate::*;

    fn with_sources(a: &[&str], b: &[&str]) -> Plan {
        let mut ca = GatewayConfig::new("a", vec!["198.19.100.0/28".parse().unwrap()]);
        let mut cb = GatewayConfig::new("b", vec!["198.19.101.0/28".parse().unwrap()]);
        ca.sources = a.iter().map(|s| s.parse().unwrap()).collect();
        cb.sources = b.iter().map(|s| s.parse().unwrap()).collect();
        Plan { network_policies: Vec::new(), version: 1, configs: vec![ca, cb], bindings: Default::default() }
    }

    #[test]
    fn nested_source_cidrs_of_two_configs_are_valid() {
        with_sources(&["198.18.0.0/16"], &["198.18.5.0/24"]).validate().unwrap();
    }

    #[test]
    fn one_cidr_bound_by_two_configs_is_refused() {
        let e = with_sources(&["198.18.0.0/16"], &["198.18.0.0/16"]).validate().unwrap_err();
        assert_eq!(e.to_string(), "source CIDR 198.18.0.0/16 is bound by both 'a' and 'b'");
    }

    #[test]
    fn a_source_cidr_holding_an_egress_address_is_refused() {
        let e = with_sources(&["198.19.0.0/16"], &[]).validate().unwrap_err();
        assert!(matches!(e, PlanError::SourceHoldsEgress { .. }), "{e}");
    }

    #[test]
    fn sources_travel_in_the_plan_json_and_are_left_out_when_empty() {
        let p = with_sources(&["198.18.0.0/16"], &[]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json.matches("\"sources\"").count(), 1, "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
    }
}

mod json {
    use crate::*;

    #[test]
    fn the_documented_json_form_parses_and_compiles() {
        let text = include_str!("../testdata/plan.json");
        let p: Plan = serde_json::from_str(text).unwrap();
        p.validate().unwrap();
        assert_eq!(p.configs[0].mapping, MappingMode::PortReuse);
        assert_eq!(p.configs[0].timeouts.udp, 120);
        assert_eq!(p.configs[0].timeouts.tcp_established, 7440, "unset timeouts keep their defaults");
        assert_eq!(p.configs[0].policy.as_ref().unwrap().rules[0].ports[1], PortRange { lo: 8000, hi: 8080 });
        let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}

mod tunnels {
    use crate::*;

    fn tunnelled_plan() -> Plan {
        let mut c = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
        c.tunnel =
            Some(TunnelConfig { address: Ipv4Addr::new(198, 18, 50, 100), port: 6000, private_key: WgSecret([7; 32]) });
        Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![c, GatewayConfig::new("b", vec!["198.19.101.0/30".parse().unwrap()])],
            bindings: vec![Binding {
                pod_ip: Ipv4Addr::new(198, 18, 0, 2),
                config: "a".into(),
                public_key: Some(WgKey([1; 32])),
            }]
            .into(),
        }
    }

    #[test]
    fn a_tunnelled_plan_passes() {
        tunnelled_plan().validate().unwrap();
    }

    #[test]
    fn a_pod_key_for_a_config_without_a_tunnel_is_refused() {
        let mut p = tunnelled_plan();
        p.bindings.make_mut()[0].config = "b".into();
        assert!(matches!(p.validate(), Err(PlanError::NoTunnel { .. })));
    }

    #[test]
    fn one_key_for_two_pods_of_a_config_is_refused() {
        let mut p = tunnelled_plan();
        let mut second = p.bindings[0].clone();
        second.pod_ip = Ipv4Addr::new(198, 18, 0, 3);
        p.bindings.make_mut().push(second);
        assert!(matches!(p.validate(), Err(PlanError::DuplicatePeerKey { .. })));
    }

    #[test]
    fn two_configs_on_one_tunnel_endpoint_are_refused() {
        let mut p = tunnelled_plan();
        p.configs[1].tunnel = p.configs[0].tunnel.clone();
        assert!(matches!(p.validate(), Err(PlanError::BadTunnel { .. })));
    }

    #[test]
    fn private_keys_never_show_and_a_redacted_plan_cannot_be_served() {
        let p = tunnelled_plan();
        let shown = serde_json::to_string(&p.redacted()).unwrap();
        assert!(!shown.contains(&WgKey([7; 32]).to_string()), "{shown}");
        assert!(!format!("{p:?}").contains(&WgKey([7; 32]).to_string()));
        let back: Result<Plan, _> = serde_json::from_str(&shown);
        assert!(back.is_err(), "'<redacted>' is no key");
        let json = serde_json::to_string(&p).unwrap();
        let again: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(again, p, "the plan itself travels with its key");
    }

    #[test]
    fn malformed_keys_get_clear_errors_that_do_not_echo_them() {
        let e = serde_json::from_str::<WgSecret>("\"c2VjcmV0\"").unwrap_err().to_string();
        assert!(e.contains("32 bytes") && !e.contains("c2VjcmV0"), "{e}");
        assert!("not base64!".parse::<WgKey>().is_err());
    }
}

mod policies {
    use crate::*;

    fn rule(name: &str, fqdns: &[&str], protocol: Option<Protocol>, ports: &[&str]) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            action: PolicyAction::Allow,
            cidrs: vec![],
            fqdns: fqdns.iter().map(|s| s.to_string()).collect(),
            protocol,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            pods: None,
            server_name: Default::default(),
            tls_ports: vec![],
            http_ports: vec![],
        }
    }

    fn policy(rules: Vec<PolicyRule>) -> EgressPolicy {
        EgressPolicy {
            default_action: PolicyAction::Deny,
            rules,
            deny_response: DenyResponse::Drop,
            live_flows: LiveFlows::Cut,
            dns_ttl_floor: 30,
            dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
        }
    }

    #[test]
    fn bad_policies_are_rejected_with_the_rule_named() {
        let p = policy(vec![rule("x", &["bad name!"], None, &[])]);
        assert_eq!(p.validate().unwrap_err().to_string(), "rule 'x': 'bad name!' is not a DNS name");
        let p = policy(vec![rule("x", &[], None, &[]), rule("x", &[], None, &[])]);
        assert_eq!(p.validate().unwrap_err(), PolicyError::DuplicateRule("x".into()));
        let p = policy(vec![rule("x", &[], Some(Protocol::Icmp), &["80"])]);
        assert_eq!(p.validate().unwrap_err(), PolicyError::PortsWithoutProtocol("x".into()));
        assert!("0".parse::<PortRange>().is_err());
        assert!("90-80".parse::<PortRange>().is_err());
    }

    #[test]
    fn every_list_and_number_of_a_policy_is_bounded() {
        let mut p = policy(vec![rule("x", &[], None, &[])]);
        p.dns_ttl_floor = MAX_DNS_TTL;
        p.validate().unwrap();
        p.dns_ttl_floor = 100_000;
        assert_eq!(p.validate().unwrap_err(), PolicyError::TtlFloorTooHigh(100_000));
        let mut p = policy(vec![rule("x", &[], None, &[])]);
        p.dns_resolvers = vec!["198.19.0.53/32".parse().unwrap(); MAX_DNS_RESOLVERS + 1];
        assert_eq!(p.validate().unwrap_err(), PolicyError::TooManyResolvers(MAX_DNS_RESOLVERS + 1));
        let mut r = rule("big", &[], None, &[]);
        r.pods = Some(vec![std::net::Ipv4Addr::new(198, 18, 0, 1); MAX_RULE_ITEMS + 1]);
        let e = policy(vec![r]).validate().unwrap_err();
        assert_eq!(e, PolicyError::RuleTooLarge { rule: "big".into(), what: "pods", count: MAX_RULE_ITEMS + 1 });
    }

    #[test]
    fn fqdn_rules_need_resolvers() {
        let mut p = policy(vec![rule("api", &["*.example.com"], None, &[])]);
        p.validate().unwrap();
        p.dns_resolvers.clear();
        assert_eq!(p.validate().unwrap_err(), PolicyError::FqdnsWithoutResolvers);
    }

    #[test]
    fn server_name_settings_read_as_written_and_bad_ones_are_named() {
        let json = r#"{"name": "blob", "action": "allow", "fqdns": ["acct.blob.example"], "protocol": "tcp",
            "ports": [443, 8443, 8080], "tlsPorts": [8443], "httpPorts": ["8080-8081"]}"#;
        let r: PolicyRule = serde_json::from_str(json).unwrap();
        assert_eq!(r.server_name, crate::ServerNameCheck::Required, "on by default");
        assert_eq!((r.reads_server_name(443), r.reads_server_name(8443)), (Some(true), Some(true)));
        assert_eq!((r.reads_server_name(80), r.reads_server_name(8081)), (Some(false), Some(false)));
        assert_eq!(r.reads_server_name(22), None, "other ports keep DNS learning alone");
        let off: PolicyRule = serde_json::from_str(
            r#"{"name": "b", "action": "allow", "fqdns": ["a.example"], "serverName": "unchecked"}"#,
        )
        .unwrap();
        assert_eq!(off.reads_server_name(443), None);
        let mut p = policy(vec![r.clone()]);
        p.validate().unwrap();
        p.rules[0].http_ports = vec!["440-450".parse().unwrap()];
        assert_eq!(p.validate().unwrap_err(), PolicyError::ServerNamePortsOverlap { rule: "blob".into(), port: 443 });
        let mut no_names = r;
        no_names.fqdns.clear();
        no_names.cidrs = vec!["198.19.0.0/24".parse().unwrap()];
        assert_eq!(
            policy(vec![no_names]).validate().unwrap_err(),
            PolicyError::ServerNamePortsWithoutFqdns("blob".into())
        );
    }

    #[test]
    fn a_rule_still_carrying_a_pod_selector_is_refused() {
        // Only egret-control resolves podSelector (into pods); a gateway that
        // ignored it would apply the rule to every pod of the config.
        let json = r#"{"name": "x", "action": "allow", "podSelector": {"matchLabels": {"app": "a"}}}"#;
        let e = serde_json::from_str::<PolicyRule>(json).unwrap_err().to_string();
        assert!(e.contains("unknown field `podSelector`"), "{e}");
    }
}
