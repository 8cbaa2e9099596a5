//! Encoding then decoding a profile record is the identity, bit for bit.

use patron_core::state::{ApplyContext, CustomerState};
use patron_core::testing::customer_events;
use patron_store::codec::{decode_profile, encode_profile};
use proptest::prelude::*;

proptest! {
    #[test]
    fn profile_records_round_trip(events in customer_events(40, 400), scope in any::<u32>()) {
        let ctx = ApplyContext::default();
        let mut state = CustomerState::default();
        for e in &events {
            state.apply(e, &ctx);
        }
        let bytes = encode_profile(scope, &state);
        let (scope2, state2) = decode_profile("c", &bytes).unwrap();
        prop_assert_eq!(scope, scope2);
        prop_assert_eq!(state, state2);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_profile("c", &bytes);
    }
}

#[test]
fn empty_profile_round_trips() {
    let s = CustomerState::default();
    assert_eq!(decode_profile("c", &encode_profile(7, &s)).unwrap(), (7, s));
}
