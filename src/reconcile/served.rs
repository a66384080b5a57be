//! Objects NetBox serves exactly as when a full pass last translated them. A full pass translates
//! every object to find what `last_updated` does not show (a parent renamed while no webhook ran,
//! a nested value NetBox does not stamp); but an object served byte for byte as last time, with
//! the same translation, yields the same entry, so while its key's record is still the one that
//! translation matched or made, it is passed over unparsed. What any change does show (the
//! object's own bytes, a nested name, a new relay build, other translation settings) makes the
//! hash differ, and the object is translated as before.

use sha2::{Digest, Sha256};

use crate::netbox::ObjectType;
use crate::state::{Known, ServedHash};
use crate::translate::Translator;

/// Hashes served objects together with what their translation depends on besides.
#[derive(Clone)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new(translator: &Translator, object_type: ObjectType) -> Self {
        Fingerprint(Sha256::new().chain_update(translator.fingerprint(object_type)))
    }

    /// The hash of one object as served.
    pub fn hash(&self, served: &[u8]) -> ServedHash {
        let digest = self.0.clone().chain_update(served).finalize();
        let mut hash = ServedHash::default();
        let len = hash.len();
        hash.copy_from_slice(&digest[..len]);
        hash
    }
}

/// The live keys of one type whose head a full pass made or matched, by id: the hash of the
/// object it translated then. Sorted, about 24 bytes a key; with the type's [`Fingerprint`].
pub struct Index {
    hashes: Vec<(u64, ServedHash)>,
    fingerprint: Fingerprint,
}

impl Index {
    pub fn of(known: &[Known], fingerprint: Fingerprint) -> Index {
        let mut hashes: Vec<(u64, ServedHash)> = known
            .iter()
            .filter(|k| k.live)
            .filter_map(|k| Some((k.id, k.served?)))
            .collect();
        hashes.sort_unstable_by_key(|(id, _)| *id);
        Index {
            hashes,
            fingerprint,
        }
    }

    /// The hash of one object as served.
    pub fn hash(&self, served: &[u8]) -> ServedHash {
        self.fingerprint.hash(served)
    }

    /// Whether the object `id`, served as `hash`, is what its head was made or matched from.
    pub fn holds(&self, id: u64, hash: &ServedHash) -> bool {
        match self.hashes.binary_search_by_key(&id, |(id, _)| *id) {
            Ok(at) => self.hashes[at].1 == *hash,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::SweepOptions;

    #[test]
    fn a_hash_depends_on_the_bytes_the_type_and_the_translation_settings() {
        let device = ObjectType::from_name("dcim.device").unwrap();
        let prefix = ObjectType::from_name("ipam.prefix").unwrap();
        let translator = |partition: &str, expand_subnets| {
            let sweep = SweepOptions {
                expand_subnets,
                max_expanded_hosts: 16,
            };
            Translator::new(partition, sweep, &[device, prefix])
        };
        let served = br#"{"id":1,"name":"a"}"#;
        let hash = |t: &Translator, o: ObjectType, b: &[u8]| Fingerprint::new(t, o).hash(b);
        let base = hash(&translator("default", false), device, served);
        assert_eq!(base, hash(&translator("default", false), device, served));
        for other in [
            hash(
                &translator("default", false),
                device,
                br#"{"id":1,"name":"b"}"#,
            ),
            hash(&translator("default", false), prefix, served),
            hash(&translator("default", true), device, served),
            hash(&translator("lab", false), device, served),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn the_index_holds_live_keys_with_their_hash_only() {
        let known = |id, live, served| Known {
            id,
            revision: chrono::DateTime::UNIX_EPOCH,
            live,
            served,
        };
        let device = ObjectType::from_name("dcim.device").unwrap();
        let sweep = SweepOptions {
            expand_subnets: false,
            max_expanded_hosts: 0,
        };
        let fingerprint = Fingerprint::new(&Translator::new("default", sweep, &[device]), device);
        let index = Index::of(
            &[
                known(9, true, Some([9; 16])),
                known(2, true, Some([2; 16])),
                known(3, false, Some([3; 16])),
                known(4, true, None),
            ],
            fingerprint,
        );
        assert!(index.holds(9, &[9; 16]) && index.holds(2, &[2; 16]));
        assert!(!index.holds(2, &[9; 16]), "another hash");
        assert!(!index.holds(3, &[3; 16]), "not live");
        assert!(!index.holds(4, &[0; 16]) && !index.holds(5, &[0; 16]));
    }
}
