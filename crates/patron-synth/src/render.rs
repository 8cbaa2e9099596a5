//! Turning a generated event into bytes: the native Patron form or a Segment Spec message.
//!
//! Amounts are carried as integer cents so that item totals add up exactly; they are written as a
//! JSON number (shortest form, e.g. `12.5`) or as a decimal string (`"12.50"`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// Product categories drawn for purchase items.
pub(crate) const CATEGORIES: [&str; 6] =
    ["books", "electronics", "garden", "grocery", "home", "toys"];

/// Channels attached to interactions other than email opens and clicks (always `email`).
pub(crate) const CHANNELS: [&str; 4] = ["web", "app", "store", "call_center"];

pub(crate) const FIRST_NAMES: [&str; 8] = [
    "Ada", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro",
];
pub(crate) const LAST_NAMES: [&str; 8] = [
    "Nakamura", "Okafor", "Petit", "Quinn", "Rossi", "Schmidt", "Tanaka", "Varga",
];
pub(crate) const COUNTRIES: [&str; 6] = ["US", "FR", "DE", "GB", "JP", "BR"];

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) sku: String,
    pub(crate) category: &'static str,
    pub(crate) quantity: u32,
    pub(crate) unit_price_cents: i64,
}

/// Who an interaction is about: a known customer or an anonymous visitor.
#[derive(Debug, Clone)]
pub(crate) enum Who {
    Customer(String),
    Anonymous(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Traits {
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) country: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Purchase {
        customer_id: String,
        order_id: String,
        amount_cents: i64,
        items: Vec<Item>,
    },
    Refund {
        customer_id: String,
        order_id: String,
        amount_cents: i64,
    },
    Interaction {
        who: Who,
        kind: &'static str,
        offer_id: Option<String>,
        channel: &'static str,
    },
    Identify {
        customer_id: String,
        anonymous_id: Option<String>,
        traits: Traits,
    },
    Alias {
        customer_id: String,
        previous_id: String,
    },
}

impl Body {
    /// The Kafka message key: customer_id, or anonymous_id if there is none.
    pub(crate) fn key(&self) -> &str {
        match self {
            Body::Purchase { customer_id, .. }
            | Body::Refund { customer_id, .. }
            | Body::Identify { customer_id, .. }
            | Body::Alias { customer_id, .. } => customer_id,
            Body::Interaction { who, .. } => match who {
                Who::Customer(id) | Who::Anonymous(id) => id,
            },
        }
    }
}

/// Rendering choices, drawn per event so that every form shows up in a stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Style {
    pub(crate) segment: bool,
    pub(crate) amount_as_string: bool,
    pub(crate) with_currency: bool,
    /// Segment "Order Completed": `revenue` if true, else only `total`.
    pub(crate) revenue: bool,
}

pub(crate) fn rfc3339(ts_millis: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ts_millis)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `1250` -> `"12.50"`. Negative values keep their sign.
pub(crate) fn cents_string(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

fn amount_value(cents: i64, as_string: bool) -> Value {
    if as_string {
        Value::String(cents_string(cents))
    } else {
        // cents / 100 as f64 prints as the shortest decimal that round-trips, i.e. the exact
        // 2-decimal amount.
        json!(cents as f64 / 100.0)
    }
}

/// `"email_open"` -> `"Email Open"`, whose snake_case is the kind again.
pub(crate) fn title_case(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn traits_value(t: &Traits) -> Value {
    json!({ "email": t.email, "name": t.name, "country": t.country })
}

pub(crate) fn render(
    event_id: &str,
    ts_millis: i64,
    body: &Body,
    style: Style,
    currency: &str,
) -> Vec<u8> {
    let v = if style.segment {
        segment(event_id, ts_millis, body, style, currency)
    } else {
        native(event_id, ts_millis, body, style, currency)
    };
    serde_json::to_vec(&v).expect("a serde_json::Value always serializes")
}

fn native(event_id: &str, ts_millis: i64, body: &Body, style: Style, currency: &str) -> Value {
    let mut m = Map::new();
    m.insert("event_id".into(), event_id.into());
    m.insert("ts".into(), rfc3339(ts_millis).into());
    match body {
        Body::Purchase {
            customer_id,
            order_id,
            amount_cents,
            items,
        } => {
            m.insert("type".into(), "purchase".into());
            m.insert("customer_id".into(), customer_id.as_str().into());
            m.insert(
                "amount".into(),
                amount_value(*amount_cents, style.amount_as_string),
            );
            if style.with_currency {
                m.insert("currency".into(), currency.into());
            }
            m.insert("order_id".into(), order_id.as_str().into());
            let items: Vec<Value> = items
                .iter()
                .map(|it| {
                    json!({
                        "sku": it.sku,
                        "category": it.category,
                        "quantity": it.quantity,
                        "unit_price": amount_value(it.unit_price_cents, style.amount_as_string),
                    })
                })
                .collect();
            m.insert("items".into(), Value::Array(items));
        }
        Body::Refund {
            customer_id,
            order_id,
            amount_cents,
        } => {
            m.insert("type".into(), "refund".into());
            m.insert("customer_id".into(), customer_id.as_str().into());
            m.insert(
                "amount".into(),
                amount_value(*amount_cents, style.amount_as_string),
            );
            if style.with_currency {
                m.insert("currency".into(), currency.into());
            }
            m.insert("order_id".into(), order_id.as_str().into());
        }
        Body::Interaction {
            who,
            kind,
            offer_id,
            channel,
        } => {
            m.insert("type".into(), "interaction".into());
            match who {
                Who::Customer(id) => m.insert("customer_id".into(), id.as_str().into()),
                Who::Anonymous(id) => m.insert("anonymous_id".into(), id.as_str().into()),
            };
            m.insert("kind".into(), (*kind).into());
            m.insert("channel".into(), (*channel).into());
            if let Some(o) = offer_id {
                m.insert("offer_id".into(), o.as_str().into());
            }
        }
        Body::Identify {
            customer_id,
            anonymous_id,
            traits,
        } => {
            m.insert("type".into(), "identify".into());
            m.insert("customer_id".into(), customer_id.as_str().into());
            if let Some(a) = anonymous_id {
                m.insert("anonymous_id".into(), a.as_str().into());
            }
            m.insert("traits".into(), traits_value(traits));
        }
        Body::Alias {
            customer_id,
            previous_id,
        } => {
            m.insert("type".into(), "alias".into());
            m.insert("customer_id".into(), customer_id.as_str().into());
            m.insert("previous_id".into(), previous_id.as_str().into());
        }
    }
    Value::Object(m)
}

fn segment(event_id: &str, ts_millis: i64, body: &Body, style: Style, currency: &str) -> Value {
    let mut m = Map::new();
    m.insert("messageId".into(), event_id.into());
    m.insert("timestamp".into(), rfc3339(ts_millis).into());
    match body {
        Body::Purchase {
            customer_id,
            order_id,
            amount_cents,
            items,
        } => {
            m.insert("type".into(), "track".into());
            m.insert("event".into(), "Order Completed".into());
            m.insert("userId".into(), customer_id.as_str().into());
            let products: Vec<Value> = items
                .iter()
                .map(|it| {
                    json!({
                        "sku": it.sku,
                        "category": it.category,
                        "quantity": it.quantity,
                        "price": amount_value(it.unit_price_cents, style.amount_as_string),
                    })
                })
                .collect();
            let amount_key = if style.revenue { "revenue" } else { "total" };
            let mut props = Map::new();
            props.insert("order_id".into(), order_id.as_str().into());
            props.insert(
                amount_key.into(),
                amount_value(*amount_cents, style.amount_as_string),
            );
            props.insert("currency".into(), currency.into());
            props.insert("products".into(), Value::Array(products));
            m.insert("properties".into(), Value::Object(props));
        }
        Body::Refund {
            customer_id,
            order_id,
            amount_cents,
        } => {
            // The Segment ecommerce spec gives "Order Refunded" a `total`, not a `revenue`.
            m.insert("type".into(), "track".into());
            m.insert("event".into(), "Order Refunded".into());
            m.insert("userId".into(), customer_id.as_str().into());
            m.insert(
                "properties".into(),
                json!({
                    "order_id": order_id,
                    "total": amount_value(*amount_cents, style.amount_as_string),
                    "currency": currency,
                }),
            );
        }
        Body::Interaction {
            who,
            kind,
            offer_id,
            channel,
        } => {
            match who {
                Who::Customer(id) => m.insert("userId".into(), id.as_str().into()),
                Who::Anonymous(id) => m.insert("anonymousId".into(), id.as_str().into()),
            };
            let mut props = Map::new();
            props.insert("channel".into(), (*channel).into());
            if let Some(o) = offer_id {
                props.insert("offer_id".into(), o.as_str().into());
            }
            if *kind == "page_view" {
                // A page call; its kind is decided by the consumer's mapping of `page`.
                m.insert("type".into(), "page".into());
                m.insert("name".into(), "Home".into());
            } else {
                m.insert("type".into(), "track".into());
                m.insert("event".into(), title_case(kind).into());
            }
            m.insert("properties".into(), Value::Object(props));
        }
        Body::Identify {
            customer_id,
            anonymous_id,
            traits,
        } => {
            m.insert("type".into(), "identify".into());
            m.insert("userId".into(), customer_id.as_str().into());
            if let Some(a) = anonymous_id {
                m.insert("anonymousId".into(), a.as_str().into());
            }
            m.insert("traits".into(), traits_value(traits));
        }
        Body::Alias {
            customer_id,
            previous_id,
        } => {
            m.insert("type".into(), "alias".into());
            m.insert("userId".into(), customer_id.as_str().into());
            m.insert("previousId".into(), previous_id.as_str().into());
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_format() {
        assert_eq!(cents_string(1250), "12.50");
        assert_eq!(cents_string(7), "0.07");
        assert_eq!(cents_string(-305), "-3.05");
        assert_eq!(amount_value(1250, false).to_string(), "12.5");
        assert_eq!(amount_value(123_456, false).to_string(), "1234.56");
    }

    #[test]
    fn title_case_round_trips_to_snake_case() {
        assert_eq!(title_case("email_open"), "Email Open");
        assert_eq!(title_case("offer_declined"), "Offer Declined");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_735_689_600_123), "2025-01-01T00:00:00.123Z");
    }
}
