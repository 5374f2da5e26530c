//! Stateless field checks shared by the aggregates' rules: node
//! addresses, text (model versions, titles, categories), item ids of a
//! delete, and setting keys and values. Each returns a `Verdict`: `Ok` or
//! the reason for the rejection.
//!
//! Must not touch: the state itself (these look at the command's fields
//! only), Raft, storage, the network, clocks or randomness (see the
//! `state` module).

use std::collections::BTreeSet;

use super::{
    MAX_ADDR_LEN, MAX_ITEMS_PER_COMMAND, MAX_SETTING_KEY_LEN, MAX_SETTING_VALUE_LEN, MAX_TEXT_LEN,
};
use crate::ids::validate_id;

/// The outcome of a check: `Err` carries the reason for the rejection.
pub(super) type Verdict = Result<(), String>;

pub(super) fn check_addr(what: &str, addr: &str, required: bool) -> Verdict {
    if addr.is_empty() {
        return if required {
            Err(format!("{what} address is empty; give host:port"))
        } else {
            Ok(())
        };
    }
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!(
            "{what} address is longer than {MAX_ADDR_LEN} bytes"
        ));
    }
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(format!("{what} address {addr:?} is not host:port"));
    }
    Ok(())
}

pub(super) fn check_version(version: &str) -> Verdict {
    if version.is_empty() {
        return Err("model version is empty".to_string());
    }
    check_text("model version", version)
}

pub(super) fn check_text(what: &str, text: &str) -> Verdict {
    if text.len() > MAX_TEXT_LEN {
        return Err(format!("{what} is longer than {MAX_TEXT_LEN} bytes"));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(format!("{what} {text:?} contains a control character"));
    }
    Ok(())
}

pub(super) fn check_delete(ids: &[String]) -> Verdict {
    if ids.is_empty() {
        return Err("no item ids given".to_string());
    }
    if ids.len() > MAX_ITEMS_PER_COMMAND {
        return Err(format!(
            "{} ids in one command; split into batches of at most {MAX_ITEMS_PER_COMMAND}",
            ids.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        validate_id(id).map_err(|e| format!("item id {id:?}: {e}"))?;
        if !seen.insert(id.as_str()) {
            return Err(format!("item {id} is listed twice"));
        }
    }
    Ok(())
}

pub(super) fn check_setting(key: &str, value: &str) -> Verdict {
    if key.is_empty() || key.len() > MAX_SETTING_KEY_LEN {
        return Err(format!(
            "setting key must be 1..={MAX_SETTING_KEY_LEN} bytes"
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "setting key {key:?} may only use ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    if value.len() > MAX_SETTING_VALUE_LEN {
        return Err(format!(
            "setting value is longer than {MAX_SETTING_VALUE_LEN} bytes"
        ));
    }
    Ok(())
}
