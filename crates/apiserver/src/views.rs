//! Replies to requests made through an older version of a resource (`autoscaling/v1`): every
//! object of the resource in them, alone, in a list, a table row or a watch event, is shown
//! in that version. Requests are converted where they are written (`write.rs`).

use api::versions::View;
use bytes::Bytes;
use serde_json::{Value, json};
use tracing::warn;

use crate::server::Reply;

pub(crate) fn show_reply(view: &'static View, mut reply: Reply) -> Reply {
    reply.body = reply.body.map_messages(move |b| show_message(view, b));
    reply
}

fn show_message(view: &'static View, bytes: Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return bytes;
    };
    show_value(view, &mut v);
    let mut out = match (v["type"].as_str(), v.get("object")) {
        // A watch event: `type`, then `object`, as Kubernetes writes them.
        (Some(ty), Some(obj)) if v.as_object().is_some_and(|m| m.len() == 2) => {
            let mut e = format!("{{\"type\":{},\"object\":", Value::String(ty.into())).into_bytes();
            e.extend_from_slice(&api::wire::to_vec(obj));
            e.push(b'}');
            e
        }
        _ => api::wire::to_vec(&v),
    };
    // Watch events are one JSON document per line.
    if bytes.ends_with(b"\n") {
        out.push(b'\n');
    }
    Bytes::from(out)
}

fn show_value(view: &'static View, v: &mut Value) {
    let r = view.storage();
    let kind = v["kind"].as_str().unwrap_or("").to_string();
    if kind == r.kind {
        match (view.show)(v.take()) {
            Ok(shown) => *v = shown,
            Err(e) => warn!(error = %e, view = ?view, "an object could not be converted"),
        }
    } else if kind == r.list_kind() {
        v["apiVersion"] = json!(view.group_version());
        for item in v["items"].as_array_mut().into_iter().flatten() {
            show_value(view, item);
        }
    } else if kind == "Table" {
        for row in v["rows"].as_array_mut().into_iter().flatten() {
            show_value(view, &mut row["object"]);
        }
    } else if let Some(ty) = v["type"].as_str()
        && v.get("object").is_some()
    {
        // A watch event; a bookmark carries no object to convert, only its version.
        if ty == "BOOKMARK" {
            v["object"]["apiVersion"] = json!(view.group_version());
        } else {
            show_value(view, &mut v["object"]);
        }
    }
}
