//! One table per counter set, as VPP's `foreach_*_error` lists: each macro
//! below turns a single list into the type, its names (the status file's
//! keys and the metric labels), its help text (the doc comments) and the
//! summing, so a counter is written once and cannot be missing from one of
//! its five uses.

/// Declares why-dropped reasons: `Variant = "label"`, each with its doc
/// comment, which is also its help text. Generates the enum (`repr(u8)`, a
/// slot per reason), `COUNT`, `ALL`, `name()` and `help()`.
#[macro_export]
macro_rules! reasons {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])+ $variant:ident = $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        $vis enum $name {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl $name {
            pub const COUNT: usize = [$($label),+].len();
            pub const ALL: [$name; Self::COUNT] = [$($name::$variant),+];

            /// The status file's key and the metric label.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }

            /// What the reason means (its doc comment).
            pub fn help(self) -> &'static str {
                match self { $($name::$variant => concat!($($doc),+).trim_start(),)+ }
            }
        }
    };
}

/// Declares a set of plain `u64` counters plus one drop slot per reason of
/// `$reason`. Generates the struct, `NAMES`, `values()`, `add()` (workers'
/// sums), `drop()`/`dropped()`/`total_drops()` and a `Serialize` that writes
/// every counter by name and the drops as `"drops": {reason: n}`.
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident, )+
        }
        drops: $reason:ident
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: u64, )+
            pub drops: [u64; $reason::COUNT],
        }

        // By hand: arrays longer than 32 have no `Default`.
        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: 0, )+ drops: [0; $reason::COUNT] }
            }
        }

        impl $name {
            pub const NAMES: [&'static str; [$(stringify!($field)),+].len()] = [$(stringify!($field)),+];

            /// Every counter but the drops, by name, in declaration order.
            pub fn values(&self) -> [(&'static str, u64); Self::NAMES.len()] {
                [$((stringify!($field), self.$field)),+]
            }

            #[inline]
            pub fn drop(&mut self, reason: $reason) {
                self.drop_n(reason, 1);
            }

            #[inline]
            pub fn drop_n(&mut self, reason: $reason, n: u64) {
                self.drops[reason as usize] += n;
            }

            pub fn dropped(&self, reason: $reason) -> u64 {
                self.drops[reason as usize]
            }

            pub fn total_drops(&self) -> u64 {
                self.drops.iter().sum()
            }

            /// Adds another set (another worker's, a retired one's) into this.
            pub fn add(&mut self, other: &Self) {
                $( self.$field += other.$field; )+
                for (a, b) in self.drops.iter_mut().zip(&other.drops) {
                    *a += b;
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(Self::NAMES.len() + 1))?;
                for (k, v) in self.values() {
                    m.serialize_entry(k, &v)?;
                }
                let drops: std::collections::BTreeMap<&str, u64> =
                    $reason::ALL.iter().map(|r| (r.name(), self.dropped(*r))).collect();
                m.serialize_entry("drops", &drops)?;
                m.end()
            }
        }
    };
}

pub use crate::{counter_set, reasons};

#[cfg(test)]
mod tests {
    reasons! {
        enum Why {
            /// First line
            /// continued.
            One = "one",
            /// Two.
            Two = "two",
        }
    }
    counter_set! {
        struct Set {
            /// Packets.
            packets,
            bytes,
        }
        drops: Why
    }

    #[test]
    fn a_reason_table_gives_slots_names_and_help() {
        assert_eq!(Why::COUNT, 2);
        assert_eq!(Why::ALL, [Why::One, Why::Two]);
        assert_eq!(Why::Two as usize, 1);
        assert_eq!(Why::One.name(), "one");
        assert_eq!(Why::One.help(), "First line continued.");
    }

    #[test]
    fn a_counter_set_sums_and_serializes_every_field_by_name() {
        let mut a = Set { packets: 1, bytes: 10, ..Default::default() };
        let mut b = Set { packets: 2, ..Default::default() };
        b.drop(Why::Two);
        a.add(&b);
        assert_eq!((a.packets, a.bytes, a.dropped(Why::Two), a.total_drops()), (3, 10, 1, 1));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json, serde_json::json!({"packets": 3, "bytes": 10, "drops": {"one": 0, "two": 1}}));
    }
}
