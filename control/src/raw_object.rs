//! An API object as the API server sent it: its JSON text, with only the
//! metadata the watcher needs (name, namespace, resourceVersion) decoded.
//!
//! Why not kube's `DynamicObject`: it decodes every field of every object
//! into a `serde_json::Value` tree (through serde's buffered `flatten`), and
//! a `resourceVersion=0` list arrives whole (the API server's watch cache
//! ignores `limit`). At 100,000 small pods that tree peaked at ~470 MB of
//! heap for ~37 MB of JSON; real pods, with their specs and managedFields,
//! are ten times larger. Kept as text, an object costs its own bytes until
//! it is decoded straight into the few fields Egret reads, and dropped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ApiResource;
use kube::core::{DynamicResourceScope, Resource};
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Clone, Debug)]
pub struct RawObject {
    /// Name, namespace and resourceVersion only.
    pub metadata: ObjectMeta,
    pub json: Box<RawValue>,
}

impl RawObject {
    /// `namespace/name` (an empty namespace for cluster-scoped kinds).
    pub fn key(&self) -> String {
        let m = &self.metadata;
        format!("{}/{}", m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""))
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawObject, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
        }
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            metadata: Meta,
        }
        let json = d.deserialize_newtype_struct(RAW_VALUE_TOKEN, Text)?;
        // The API server always writes these as strings; anything else
        // leaves them out, and the object's own decode says what is wrong
        // with it (one odd object must not fail its whole list).
        let m = serde_json::from_str::<Head>(json.get()).map(|h| h.metadata).unwrap_or_default();
        let metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            resource_version: m.resource_version,
            ..ObjectMeta::default()
        };
        Ok(RawObject { metadata, json })
    }
}

/// serde_json's name for a raw value: asked for a newtype of this name, its
/// deserializer hands over the value's text as a one-entry map.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// An object's JSON text, read from wherever serde_json reads it.
struct Text;

impl<'de> Visitor<'de> for Text {
    type Value = Box<RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    /// Straight from serde_json's deserializer: the text as it came.
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Box<RawValue>, A::Error> {
        match m.next_key::<String>()? {
            Some(k) if k == RAW_VALUE_TOKEN => {}
            _ => return Err(A::Error::custom("expected serde_json's raw value")),
        }
        RawValue::from_string(m.next_value::<String>()?).map_err(A::Error::custom)
    }

    /// From a value serde buffered first (a watch event whose `object`
    /// comes before its `type`), or a serde_json that no longer knows the
    /// name: read whole and written out again, slower but the same.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Box<RawValue>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::value::to_raw_value(&v).map_err(D::Error::custom)
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_text_and_reads_only_the_watchers_metadata() {
        let text = r#"{"kind":"Pod","metadata":{"name":"a","namespace":"apps","resourceVersion":"7","uid":"u",
            "managedFields":[{"manager":"kubelet"}]},"spec":{"containers":[]}}"#;
        let o: RawObject = serde_json::from_str(text).unwrap();
        assert_eq!(o.key(), "apps/a");
        assert_eq!(o.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(o.metadata.uid, None);
        assert_eq!(o.json.get(), text);
    }

    #[test]
    fn a_watch_event_reads_the_same_whichever_field_comes_first() {
        use kube::core::WatchEvent;
        let object =
            r#"{"metadata":{"name":"a","namespace":"apps","resourceVersion":"7"},"status":{"podIP":"198.18.0.2"}}"#;
        for text in [
            format!(r#"{{"type":"ADDED","object":{object}}}"#),
            // Buffered by serde before the object is read.
            format!(r#"{{"object":{object},"type":"ADDED"}}"#),
        ] {
            let WatchEvent::Added(o) = serde_json::from_str::<WatchEvent<RawObject>>(&text).unwrap() else {
                panic!("an added event")
            };
            assert_eq!(o.key(), "apps/a");
            let v: serde_json::Value = serde_json::from_str(o.json.get()).unwrap();
            assert_eq!(v, serde_json::from_str::<serde_json::Value>(object).unwrap());
        }
    }

    #[test]
    fn an_object_with_odd_metadata_does_not_fail_its_list() {
        #[derive(Deserialize)]
        struct List {
            items: Vec<RawObject>,
        }
        let l: List = serde_json::from_str(r#"{"items":[{"metadata":{"name":5}},{"metadata":{"name":"b"}}]}"#).unwrap();
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.items[0].key(), "/");
        assert_eq!(l.items[1].key(), "/b");
    }
}
