#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Whatever a caller sends, validation and normalization answer with a value or an error, never a
//! panic: arbitrary JSON, and the fixtures with their values replaced at random.

use chrono::Utc;
use proptest::prelude::*;
use serde_json::{Value, json};
use tcb_model::{
    EventMethod, IdKind, TriggerEnvelope, normalize_event, normalize_event_v2,
    normalize_fetched_order, normalize_fetched_order_v2,
};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9 .:-]{0,12}".prop_map(Value::String),
        Just(json!("OrderLinesConfirmedBySupplier")),
        Just(json!("1e400")),
        Just(json!("99999999999999999999999999999.9")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("eventName".to_owned()),
                    Just("orderEvent".to_owned()),
                    Just("singleDeliveryOrderEvent".to_owned()),
                    Just("orderId".to_owned()),
                    Just("lines".to_owned()),
                    Just("deliverySchedule".to_owned()),
                    Just("quantity".to_owned()),
                    Just("buyerLine".to_owned()),
                    Just("position".to_owned()),
                    Just("meta".to_owned()),
                    Just("messageId".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random place of `v` with `with`.
fn mutate(v: &mut Value, path: &[usize], with: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = with;
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(first % m.len()).cloned().unwrap();
            mutate(m.get_mut(&key).unwrap(), rest, with);
        }
        Value::Array(a) if !a.is_empty() => {
            let i = first % a.len();
            mutate(&mut a[i], rest, with);
        }
        _ => *v = with,
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn exercise(body: &[u8]) {
    for content_type in ["application/json", "application/xml"] {
        if let Ok(t) =
            TriggerEnvelope::event(EventMethod::Post, Some(content_type), body, Utc::now())
        {
            let _ = normalize_event(&t, Utc::now());
            // v2 delivers whatever is a JSON object (type problems become warnings).
            let v2 = normalize_event_v2(&t, Utc::now());
            assert!(content_type != "application/json" || v2.is_ok(), "{v2:?}");
        }
    }
    for kind in [IdKind::OrderId, IdKind::LegacyOrderId] {
        let t = TriggerEnvelope::get(kind, "o-1", Utc::now()).unwrap();
        let _ = normalize_fetched_order(&t, body, Utc::now());
        let _ = normalize_fetched_order_v2(&t, body, Utc::now());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_json(v in arb_json()) {
        exercise(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn arbitrary_xml(x in r#"(<[a-zA-Z]{1,4}>|</[a-zA-Z]{1,4}>|<[a-z]{1,3}/>|&[a-z#0-9x]{1,6};|[a-zA-Z0-9 .]{0,6}|<!\[CDATA\[[a-z<>]{0,5}\]\]>|<\?xml version="1.0"\?>|<!DOCTYPE a>|<eventName>OrderX</eventName>|<orderId>o-1</orderId>){0,40}"#) {
        exercise(x.as_bytes());
    }

    #[test]
    fn arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise(&b);
    }

    #[test]
    fn fixtures_with_a_value_replaced(
        which in 0usize..4,
        path in prop::collection::vec(any::<usize>(), 0..7),
        with in arb_json(),
    ) {
        let name = ["event-lines-confirmed.json", "event-single-delivery.json", "order-v2.json", "legacy-order.json"][which];
        let mut v = fixture(name);
        mutate(&mut v, &path, with);
        exercise(&serde_json::to_vec(&v).unwrap());
    }
}
