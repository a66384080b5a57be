//! The query of `GET /sd/prometheus`: `kind=`, `status=`, `label.<name>=<value>` (repeatable, all
//! must hold) and `port=`. Lists may be comma-separated or repeated.

use super::targets::{Selection, TARGET_KINDS};
use crate::delta::Kind;

/// A query the answer cannot be made of. Messages name the parameter, never echo long input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("kind {0:?} has no targets; one of device, virtual_machine, ip_address, service")]
    Kind(String),
    #[error("port must be a number from 1 to 65535")]
    Port,
    #[error("label.<name> needs a name")]
    LabelName,
    #[error("unknown parameter {0:?}; known: kind, status, label.<name>, port")]
    Unknown(String),
    #[error("at most {MAX_FILTERS} kind, status and label filters in one query")]
    TooMany,
}

/// Filters one query may carry: every target is checked against each, so that their number is
/// the cost of an answer (3,000 label filters cost 0.6 s of CPU per answer).
pub const MAX_FILTERS: usize = 64;

/// Parses the raw query string (`None`: no query).
pub fn parse(query: Option<&str>) -> Result<Selection, QueryError> {
    let mut selection = Selection::default();
    let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    for (name, value) in pairs {
        match name.as_ref() {
            "kind" => {
                for kind in list(&value) {
                    selection.kinds.push(kind_of(kind)?);
                }
            }
            "status" => selection.statuses.extend(list(&value).map(String::from)),
            "port" => {
                let port = value.parse::<u16>().ok().filter(|p| *p > 0);
                selection.port = Some(port.ok_or(QueryError::Port)?);
            }
            other => match other.strip_prefix("label.") {
                Some("") => return Err(QueryError::LabelName),
                Some(label) => selection
                    .labels
                    .push((label.to_string(), value.into_owned())),
                None => return Err(QueryError::Unknown(short(other))),
            },
        }
        let filters = selection.kinds.len() + selection.statuses.len() + selection.labels.len();
        if filters > MAX_FILTERS {
            return Err(QueryError::TooMany);
        }
    }
    Ok(selection)
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

fn kind_of(name: &str) -> Result<Kind, QueryError> {
    TARGET_KINDS
        .iter()
        .copied()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| QueryError::Kind(short(name)))
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_read() {
        let selection =
            parse(Some("kind=device,virtual_machine&status=active&label.site=fra1&label.tag.prod=true&port=9100"))
                .unwrap();
        assert_eq!(selection.kinds, vec![Kind::Device, Kind::VirtualMachine]);
        assert_eq!(selection.statuses, vec!["active"]);
        assert_eq!(
            selection.labels,
            vec![
                ("site".to_string(), "fra1".to_string()),
                ("tag.prod".to_string(), "true".to_string())
            ]
        );
        assert_eq!(selection.port, Some(9100));
        assert_eq!(parse(None).unwrap(), Selection::default());
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            parse(Some("kind=prefix")),
            Err(QueryError::Kind("prefix".into()))
        );
        assert_eq!(parse(Some("port=0")), Err(QueryError::Port));
        assert_eq!(parse(Some("port=70000")), Err(QueryError::Port));
        assert_eq!(parse(Some("label.=x")), Err(QueryError::LabelName));
        assert_eq!(
            parse(Some("site=fra1")),
            Err(QueryError::Unknown("site".into()))
        );
        let many: Vec<String> = (0..=MAX_FILTERS).map(|i| format!("label.l{i}=v")).collect();
        assert_eq!(parse(Some(&many.join("&"))), Err(QueryError::TooMany));
        let many: Vec<String> = (0..=MAX_FILTERS).map(|i| format!("status=s{i}")).collect();
        assert_eq!(parse(Some(&many.join("&"))), Err(QueryError::TooMany));
        let enough: Vec<String> = (0..MAX_FILTERS).map(|i| format!("label.l{i}=v")).collect();
        assert!(parse(Some(&enough.join("&"))).is_ok());
    }
}
