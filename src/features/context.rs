//! What the request itself tells us: when it happens and on what device.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Unknown,
    Mobile,
    Desktop,
    Tablet,
    Tv,
    Other,
}

impl Device {
    /// Free-text device names map onto a few buckets; anything unrecognised
    /// is `Other` rather than an error, because clients send all sorts.
    pub fn parse(s: &str) -> Device {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "unknown" => Device::Unknown,
            "mobile" | "phone" | "android" | "ios" => Device::Mobile,
            "desktop" | "web" | "pc" => Device::Desktop,
            "tablet" | "ipad" => Device::Tablet,
            "tv" | "ctv" => Device::Tv,
            _ => Device::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Device::Unknown => "",
            Device::Mobile => "mobile",
            Device::Desktop => "desktop",
            Device::Tablet => "tablet",
            Device::Tv => "tv",
            Device::Other => "other",
        }
    }

    /// Numeric code used as a feature; unknown is missing (NaN).
    pub(crate) fn code(self) -> f32 {
        match self {
            Device::Unknown => f32::NAN,
            Device::Mobile => 1.0,
            Device::Desktop => 2.0,
            Device::Tablet => 3.0,
            Device::Tv => 4.0,
            Device::Other => 5.0,
        }
    }
}

/// The request's own context.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestContext {
    /// Unix seconds at which the recommendation is asked for.
    pub now: i64,
    pub device: Device,
}

impl RequestContext {
    pub fn at(now: i64) -> Self {
        RequestContext {
            now,
            device: Device::Unknown,
        }
    }

    /// Hour of day (UTC) and day of week (0 = Monday).
    pub fn hour_and_weekday(&self) -> (u32, u32) {
        let secs_of_day = self.now.rem_euclid(86_400);
        let days = self.now.div_euclid(86_400);
        // 1970-01-01 was a Thursday (weekday 3 with Monday = 0)
        let weekday = (days + 3).rem_euclid(7);
        ((secs_of_day / 3600) as u32, weekday as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_and_weekday_known_dates() {
        // 2024-01-01 00:30 UTC was a Monday
        assert_eq!(RequestContext::at(1_704_069_000).hour_and_weekday(), (0, 0));
        // 1998-04-22 23:59:59 UTC was a Wednesday
        assert_eq!(RequestContext::at(893_289_599).hour_and_weekday(), (23, 2));
        // before the epoch still works: 1969-12-31 23:00 was a Wednesday
        assert_eq!(RequestContext::at(-3600).hour_and_weekday(), (23, 2));
    }

    #[test]
    fn devices_bucket() {
        assert_eq!(Device::parse("Android"), Device::Mobile);
        assert_eq!(Device::parse("fridge"), Device::Other);
        assert!(Device::parse("").code().is_nan());
    }
}
