//! `floodgate demo`: Floodgate in front of a small Magento-like origin, both on loopback,
//! so a newcomer can see MISS, HIT and the Magento rules without a shop.

mod origin;

pub use origin::DemoOrigin;
