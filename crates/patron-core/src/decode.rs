//! Decoding raw bytes into validated [`Event`]s: the native form and the Segment Spec form.
//!
//! The envelope is parsed once into borrowed raw JSON slices, one per known field. Each field is
//! then typed on its own, so a rejection can name the field at fault (serde's whole-struct errors
//! cannot). Unknown fields are ignored, as Segment payloads carry many.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::PatronConfig;
use crate::event::*;
use crate::money::Money;
use crate::time::{Millis, parse_rfc3339};

/// Why an event was rejected. The code is stable: it names metrics and dead-letter headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    TooLarge,
    InvalidUtf8,
    MalformedJson,
    MissingField,
    WrongType,
    UnknownType,
    InvalidAmount,
    UnknownCurrency,
    FutureTimestamp,
    /// An identity record between instances (`patron.route` header) that cannot be read.
    InvalidRoute,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::TooLarge,
        RejectReason::InvalidUtf8,
        RejectReason::MalformedJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::UnknownType,
        RejectReason::InvalidAmount,
        RejectReason::UnknownCurrency,
        RejectReason::FutureTimestamp,
        RejectReason::InvalidRoute,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::InvalidAmount => "invalid_amount",
            RejectReason::UnknownCurrency => "unknown_currency",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::InvalidRoute => "invalid_route",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// A rejected event: the reason code and a one-line detail naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

/// Validation limits and currency conversion, built once from config.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub max_event_bytes: usize,
    pub max_future_skew_ms: i64,
    pub max_amount: Money,
    pub base_currency: String,
    fx_rates: HashMap<String, f64>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::from_config(&PatronConfig::default())
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    items: Option<&'a RawValue>,
    #[serde(borrow, rename = "kind")]
    interaction_kind: Option<&'a RawValue>,
    #[serde(borrow)]
    offer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    decision_id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
    #[serde(borrow)]
    previous_id: Option<&'a RawValue>,
    // Segment Spec
    #[serde(borrow, rename = "messageId")]
    message_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "anonymousId")]
    segment_anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "previousId")]
    segment_previous_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, rename = "originalTimestamp")]
    original_timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SegmentProperties<'a> {
    #[serde(borrow)]
    revenue: Option<&'a RawValue>,
    #[serde(borrow)]
    total: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    products: Option<&'a RawValue>,
    #[serde(borrow)]
    offer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    decision_id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    category: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    unit_price: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

fn wrong_type(field: &str, expected: &str) -> Rejection {
    Rejection::new(
        RejectReason::WrongType,
        format!("field `{field}`: expected {expected}"),
    )
}

fn missing(field: &str) -> Rejection {
    Rejection::new(
        RejectReason::MissingField,
        format!("missing required field `{field}`"),
    )
}

/// An optional string field; `null` counts as absent.
fn opt_str<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if r.get().starts_with('"') => {
            let s: Cow<'a, str> =
                serde_json::from_str(r.get()).map_err(|_| wrong_type(field, "a string"))?;
            Ok(Some(s))
        }
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

/// A required non-empty string field.
fn req_str<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Cow<'a, str>, Rejection> {
    match opt_str(raw, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(Rejection::new(
            RejectReason::MissingField,
            format!("field `{field}` is empty"),
        )),
        None => Err(missing(field)),
    }
}

/// An id field: a string, or an integer (common in order exports), as text.
fn opt_id(raw: Option<&RawValue>, field: &str) -> Result<Option<String>, Rejection> {
    match raw {
        Some(r)
            if !is_null(Some(r)) && r.get().bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
        {
            Ok(Some(r.get().to_owned()))
        }
        other => Ok(opt_str(other, field)?
            .map(Cow::into_owned)
            .filter(|s| !s.is_empty())),
    }
}

fn req_id(raw: Option<&RawValue>, field: &str) -> Result<String, Rejection> {
    if is_null(raw) {
        return Err(missing(field));
    }
    opt_id(raw, field)?.ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingField,
            format!("field `{field}` is empty"),
        )
    })
}

/// A number or a decimal string, parsed exactly. Does not check the sign.
fn money_field(raw: Option<&RawValue>, field: &str) -> Result<Option<Money>, Rejection> {
    let Some(r) = raw.filter(|r| r.get() != "null") else {
        return Ok(None);
    };
    let text = r.get();
    let parsed = if text.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(text)
            .map_err(|_| wrong_type(field, "a number or decimal string"))?;
        match Money::parse_decimal(&s) {
            Some(m) => m,
            // "NaN" and "Infinity" are numbers, just not finite ones; "abc" is not a number at all.
            None if s.trim().parse::<f64>().is_ok() => {
                return Err(Rejection::new(
                    RejectReason::InvalidAmount,
                    format!("field `{field}`: `{s}` is not a finite number"),
                ));
            }
            None => return Err(wrong_type(field, "a number or decimal string")),
        }
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Money::parse_decimal(text).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidAmount,
                format!("field `{field}`: {text} is not a finite amount"),
            )
        })?
    } else {
        return Err(wrong_type(field, "a number or decimal string"));
    };
    Ok(Some(parsed))
}

fn object_text(raw: Option<&RawValue>, field: &str) -> Result<Option<String>, Rejection> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if r.get().starts_with('{') => {
            // Re-serialise compactly; the raw slice may carry insignificant whitespace.
            let v: serde_json::Value =
                serde_json::from_str(r.get()).map_err(|_| wrong_type(field, "an object"))?;
            Ok(Some(v.to_string()))
        }
        Some(_) => Err(wrong_type(field, "an object")),
    }
}

/// Segment event names become interaction kinds: "Product Viewed" -> "product_viewed".
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && prev_lower && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

impl Decoder {
    pub fn from_config(config: &PatronConfig) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            max_event_bytes: config.ingest.max_event_bytes,
            max_future_skew_ms: ms(config.ingest.max_future_skew),
            max_amount: config.money.max_amount_money(),
            base_currency: config.money.base_currency.to_ascii_uppercase(),
            fx_rates: config
                .money
                .fx_rates
                .iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), *v))
                .collect(),
        }
    }

    /// Decodes one message. `now` is the wall clock, for the future-skew rule.
    pub fn decode(&self, bytes: &[u8], now: Millis) -> Result<Event, Rejection> {
        if bytes.len() > self.max_event_bytes {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                format!(
                    "event is {} bytes, over max_event_bytes = {}",
                    bytes.len(),
                    self.max_event_bytes
                ),
            ));
        }
        let text = utf8(bytes)?;
        let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
            Rejection::new(
                RejectReason::MalformedJson,
                format!("not a JSON object: {e}"),
            )
        })?;
        let type_name = req_str(env.kind, "type")?;
        let segment_form = matches!(&*type_name, "track" | "page" | "screen" | "group")
            || (env.event_id.is_none() && env.message_id.is_some());
        let event = if segment_form {
            self.decode_segment(&env, &type_name)?
        } else {
            self.decode_native(&env, &type_name)?
        };
        if event.ts > now.saturating_add(self.max_future_skew_ms) {
            return Err(Rejection::new(
                RejectReason::FutureTimestamp,
                format!(
                    "field `ts` is {} ahead of the wall clock, over max_future_skew",
                    crate::time::to_rfc3339(event.ts)
                ),
            ));
        }
        Ok(event)
    }

    fn timestamp(&self, raw: Option<&RawValue>, field: &str) -> Result<Millis, Rejection> {
        let s = req_str(raw, field)?;
        parse_rfc3339(&s).ok_or_else(|| wrong_type(field, "an RFC 3339 timestamp"))
    }

    /// Converts to base currency and applies the amount rules (> 0, ≤ max_amount).
    fn amount(
        &self,
        amount: Option<Money>,
        field: &str,
        currency: Option<&str>,
    ) -> Result<Money, Rejection> {
        let amount = amount.ok_or_else(|| missing(field))?;
        if amount <= Money::ZERO {
            return Err(Rejection::new(
                RejectReason::InvalidAmount,
                format!("field `{field}` must be > 0, got {amount}"),
            ));
        }
        let base = self.to_base(amount, currency, field)?;
        if base > self.max_amount {
            return Err(Rejection::new(
                RejectReason::InvalidAmount,
                format!(
                    "field `{field}` = {base} {} exceeds max_amount {}",
                    self.base_currency, self.max_amount
                ),
            ));
        }
        Ok(base)
    }

    fn to_base(
        &self,
        amount: Money,
        currency: Option<&str>,
        field: &str,
    ) -> Result<Money, Rejection> {
        let Some(cur) = currency else {
            return Ok(amount);
        };
        if cur.eq_ignore_ascii_case(&self.base_currency) {
            return Ok(amount);
        }
        let upper = cur.to_ascii_uppercase();
        let rate = self.fx_rates.get(&upper).ok_or_else(|| {
            Rejection::new(
                RejectReason::UnknownCurrency,
                format!("field `currency`: `{cur}` is not the base currency and has no rate in [money] fx_rates"),
            )
        })?;
        amount.convert(*rate).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidAmount,
                format!("field `{field}` overflows after conversion"),
            )
        })
    }

    fn items(
        &self,
        raw: Option<&RawValue>,
        field: &str,
        currency: Option<&str>,
    ) -> Result<Vec<LineItem>, Rejection> {
        let Some(r) = raw.filter(|r| r.get() != "null") else {
            return Ok(Vec::new());
        };
        if !r.get().starts_with('[') {
            return Err(wrong_type(field, "an array of items"));
        }
        let raw_items: Vec<RawItem<'_>> = serde_json::from_str(r.get())
            .map_err(|_| wrong_type(field, "an array of item objects"))?;
        raw_items
            .into_iter()
            .enumerate()
            .map(|(i, it)| {
                let sku = match opt_id(it.sku, &format!("{field}[{i}].sku"))? {
                    Some(s) => s,
                    None => opt_id(it.product_id, &format!("{field}[{i}].product_id"))?
                        .unwrap_or_default(),
                };
                let category =
                    opt_str(it.category, &format!("{field}[{i}].category"))?.map(Cow::into_owned);
                let quantity = match it.quantity.filter(|q| q.get() != "null") {
                    None => 1.0,
                    Some(q) => q
                        .get()
                        .parse::<f64>()
                        .ok()
                        .filter(|q| q.is_finite() && *q >= 0.0)
                        .ok_or_else(|| {
                            wrong_type(&format!("{field}[{i}].quantity"), "a non-negative number")
                        })?,
                };
                let price_field = format!("{field}[{i}].unit_price");
                let price =
                    money_field(it.unit_price.or(it.price), &price_field)?.unwrap_or(Money::ZERO);
                let unit_price = self.to_base(price, currency, &price_field)?;
                Ok(LineItem {
                    sku,
                    category,
                    quantity,
                    unit_price,
                })
            })
            .collect()
    }

    fn decode_native(&self, env: &Envelope<'_>, type_name: &str) -> Result<Event, Rejection> {
        let event_id = req_id(env.event_id, "event_id")?;
        let ts = self.timestamp(env.ts, "ts")?;
        let id = EventId::of(&event_id);
        let body = match type_name {
            "purchase" | "refund" => {
                let customer_id = req_id(env.customer_id, "customer_id")?;
                let currency = opt_str(env.currency, "currency")?;
                let amount = self.amount(
                    money_field(env.amount, "amount")?,
                    "amount",
                    currency.as_deref(),
                )?;
                let order_id = opt_id(env.order_id, "order_id")?;
                if type_name == "purchase" {
                    let items = self.items(env.items, "items", currency.as_deref())?;
                    EventBody::Purchase(Purchase {
                        customer_id,
                        amount,
                        order_id,
                        items,
                    })
                } else {
                    EventBody::Refund(Refund {
                        customer_id,
                        amount,
                        order_id,
                    })
                }
            }
            "interaction" => {
                let (profile_id, anonymous) = match opt_id(env.customer_id, "customer_id")? {
                    Some(c) => (c, false),
                    None => match opt_id(env.anonymous_id, "anonymous_id")? {
                        Some(a) => (a, true),
                        None => return Err(missing("customer_id` or `anonymous_id")),
                    },
                };
                EventBody::Interaction(Interaction {
                    profile_id,
                    anonymous,
                    kind: req_str(env.interaction_kind, "kind")?.into_owned(),
                    offer_id: opt_id(env.offer_id, "offer_id")?,
                    channel: opt_str(env.channel, "channel")?.map(Cow::into_owned),
                    decision_id: opt_id(env.decision_id, "decision_id")?,
                })
            }
            "identify" => EventBody::Identify(Identify {
                customer_id: req_id(env.customer_id, "customer_id")?,
                anonymous_id: opt_id(env.anonymous_id, "anonymous_id")?,
                traits: object_text(env.traits, "traits")?,
            }),
            "alias" => EventBody::Alias(Alias {
                previous_id: req_id(env.previous_id, "previous_id")?,
                customer_id: req_id(env.customer_id, "customer_id")?,
            }),
            "erase" => EventBody::Erase(Erase {
                customer_id: req_id(env.customer_id, "customer_id")?,
            }),
            other => {
                return Err(Rejection::new(
                    RejectReason::UnknownType,
                    format!(
                        "unknown event type `{other}` (expected purchase, refund, interaction, identify or alias)"
                    ),
                ));
            }
        };
        Ok(Event { id, ts, body })
    }

    fn decode_segment(&self, env: &Envelope<'_>, type_name: &str) -> Result<Event, Rejection> {
        if type_name == "group" {
            return Err(Rejection::new(
                RejectReason::UnknownType,
                "Segment `group` calls are not supported",
            ));
        }
        let message_id = req_id(env.message_id, "messageId")?;
        let ts_raw = if !is_null(env.timestamp) {
            env.timestamp
        } else {
            env.original_timestamp
        };
        let ts = self.timestamp(ts_raw, "timestamp")?;
        let id = EventId::of(&message_id);
        let user_id = opt_id(env.user_id, "userId")?;
        let anonymous_id = opt_id(env.segment_anonymous_id, "anonymousId")?;
        let props: Option<SegmentProperties<'_>> = match env.properties {
            Some(p) if p.get().starts_with('{') => Some(
                serde_json::from_str(p.get()).map_err(|_| wrong_type("properties", "an object"))?,
            ),
            Some(p) if p.get() != "null" => return Err(wrong_type("properties", "an object")),
            _ => None,
        };
        let body = match type_name {
            "track" => {
                let event_name = req_str(env.event, "event")?;
                match &*event_name {
                    "Order Completed" | "Order Refunded" => {
                        let customer_id = user_id.ok_or_else(|| missing("userId"))?;
                        let p = props.as_ref();
                        let currency = opt_str(p.and_then(|p| p.currency), "properties.currency")?;
                        let (raw_amount, field) = match p {
                            Some(p) if !is_null(p.revenue) => (p.revenue, "properties.revenue"),
                            Some(p) => (p.total, "properties.total"),
                            None => (None, "properties.revenue"),
                        };
                        let amount = self.amount(
                            money_field(raw_amount, field)?,
                            field,
                            currency.as_deref(),
                        )?;
                        let order_id = opt_id(p.and_then(|p| p.order_id), "properties.order_id")?;
                        if event_name == "Order Completed" {
                            let items = self.items(
                                p.and_then(|p| p.products),
                                "properties.products",
                                currency.as_deref(),
                            )?;
                            EventBody::Purchase(Purchase {
                                customer_id,
                                amount,
                                order_id,
                                items,
                            })
                        } else {
                            EventBody::Refund(Refund {
                                customer_id,
                                amount,
                                order_id,
                            })
                        }
                    }
                    _ => self.segment_interaction(
                        user_id,
                        anonymous_id,
                        snake_case(&event_name),
                        props.as_ref(),
                    )?,
                }
            }
            "page" | "screen" => {
                let kind = if type_name == "page" {
                    "page_view"
                } else {
                    "screen_view"
                };
                self.segment_interaction(user_id, anonymous_id, kind.to_owned(), props.as_ref())?
            }
            "identify" => EventBody::Identify(Identify {
                customer_id: user_id.ok_or_else(|| missing("userId"))?,
                anonymous_id,
                traits: object_text(env.traits, "traits")?,
            }),
            "alias" => EventBody::Alias(Alias {
                previous_id: req_id(env.segment_previous_id, "previousId")?,
                customer_id: user_id.ok_or_else(|| missing("userId"))?,
            }),
            other => {
                return Err(Rejection::new(
                    RejectReason::UnknownType,
                    format!("unknown Segment call type `{other}`"),
                ));
            }
        };
        Ok(Event { id, ts, body })
    }

    fn segment_interaction(
        &self,
        user_id: Option<String>,
        anonymous_id: Option<String>,
        kind: String,
        props: Option<&SegmentProperties<'_>>,
    ) -> Result<EventBody, Rejection> {
        let (profile_id, anonymous) = match (user_id, anonymous_id) {
            (Some(u), _) => (u, false),
            (None, Some(a)) => (a, true),
            (None, None) => return Err(missing("userId` or `anonymousId")),
        };
        Ok(EventBody::Interaction(Interaction {
            profile_id,
            anonymous,
            kind,
            offer_id: opt_id(props.and_then(|p| p.offer_id), "properties.offer_id")?,
            channel: opt_str(props.and_then(|p| p.channel), "properties.channel")?
                .map(Cow::into_owned),
            decision_id: opt_id(props.and_then(|p| p.decision_id), "properties.decision_id")?,
        }))
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_800_000_000_000;

    fn decoder() -> Decoder {
        let mut c = PatronConfig::default();
        c.money.fx_rates.insert("EUR".into(), 1.1);
        Decoder::from_config(&c)
    }

    fn reject(json: &str) -> Rejection {
        decoder().decode(json.as_bytes(), NOW).expect_err(json)
    }

    #[test]
    fn native_purchase_with_items_and_fx() {
        let e = decoder()
            .decode(
                br#"{"event_id":"e1","type":"purchase","ts":"2025-03-01T10:00:00Z","customer_id":"c1","amount":"20.00","currency":"EUR","items":[{"sku":"A","category":"shoes","quantity":2,"unit_price":10}]}"#,
                NOW,
            )
            .unwrap();
        let EventBody::Purchase(p) = e.body else {
            panic!()
        };
        assert_eq!(p.amount, Money(22_000_000));
        assert_eq!(p.items[0].unit_price, Money(11_000_000));
        assert_eq!(p.items[0].category.as_deref(), Some("shoes"));
    }

    #[test]
    fn segment_order_completed_uses_revenue_then_total() {
        let d = decoder();
        let e = d
            .decode(br#"{"type":"track","event":"Order Completed","messageId":"m1","userId":"u1","timestamp":"2025-03-01T10:00:00Z","properties":{"total":12.5,"products":[{"product_id":"p","price":12.5,"quantity":1}]}}"#, NOW)
            .unwrap();
        assert!(
            matches!(e.body, EventBody::Purchase(ref p) if p.amount == Money(12_500_000) && p.items.len() == 1)
        );
        let e = d
            .decode(br#"{"type":"track","event":"Product Viewed","messageId":"m2","anonymousId":"a1","timestamp":"2025-03-01T10:00:00Z"}"#, NOW)
            .unwrap();
        assert!(
            matches!(e.body, EventBody::Interaction(ref i) if i.kind == "product_viewed" && i.anonymous)
        );
    }

    #[test]
    fn every_rule_rejects_with_its_reason() {
        let ts = r#""ts":"2025-03-01T10:00:00Z""#;
        let cases = [
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":1"#), RejectReason::MalformedJson),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"amount":1}}"#), RejectReason::MissingField),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":true}}"#), RejectReason::WrongType),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":"abc"}}"#), RejectReason::WrongType),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":0}}"#), RejectReason::InvalidAmount),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":-3}}"#), RejectReason::InvalidAmount),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":1e12}}"#), RejectReason::InvalidAmount),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":"Infinity"}}"#), RejectReason::InvalidAmount),
            (format!(r#"{{"event_id":"e","type":"purchase",{ts},"customer_id":"c","amount":5,"currency":"XXZ"}}"#), RejectReason::UnknownCurrency),
            (format!(r#"{{"event_id":"e","type":"teleport",{ts}}}"#), RejectReason::UnknownType),
            (r#"{"type":"group","messageId":"m","userId":"u","timestamp":"2025-03-01T10:00:00Z"}"#.to_string(), RejectReason::UnknownType),
            (r#"{"event_id":"e","type":"refund","ts":"2099-01-01T00:00:00Z","customer_id":"c","amount":1}"#.to_string(), RejectReason::FutureTimestamp),
            (r#"{"event_id":"e","type":"refund","ts":"yesterday","customer_id":"c","amount":1}"#.to_string(), RejectReason::WrongType),
            (r#"{"event_id":"e","type":"refund","customer_id":"c","amount":1}"#.to_string(), RejectReason::MissingField),
            ("[1,2]".to_string(), RejectReason::MalformedJson),
        ];
        for (json, reason) in cases {
            assert_eq!(reject(&json).reason, reason, "{json}");
        }
        let bad_utf8 = b"{\"event_id\":\"\xff\"}";
        assert_eq!(
            decoder().decode(bad_utf8, NOW).unwrap_err().reason,
            RejectReason::InvalidUtf8
        );
        let big = format!(
            r#"{{"event_id":"e","type":"identify",{ts},"customer_id":"c","traits":{{"x":"{}"}}}}"#,
            "a".repeat(70_000)
        );
        assert_eq!(reject(&big).reason, RejectReason::TooLarge);
    }

    #[test]
    fn rejection_names_the_field() {
        let r = reject(
            r#"{"event_id":"e","type":"purchase","ts":"2025-03-01T10:00:00Z","customer_id":"c","amount":{}}"#,
        );
        assert!(r.detail.contains("`amount`"), "{}", r.detail);
    }

    #[test]
    fn snake_cases_names() {
        assert_eq!(snake_case("Product Viewed"), "product_viewed");
        assert_eq!(snake_case("emailOpened"), "email_opened");
        assert_eq!(snake_case("  Cart -- Add "), "cart_add");
    }
}
