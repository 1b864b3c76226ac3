//! Pools and the blue:green traffic ratio.

use std::{fmt, str::FromStr};

use bg_lb_common::maps::{POOL_BLUE, POOL_GREEN};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    Blue,
    Green,
}

impl Pool {
    /// Both pools, in [`Pool::index`] order.
    pub const ALL: [Pool; 2] = [Pool::Blue, Pool::Green];

    pub const fn index(self) -> usize {
        match self {
            Pool::Blue => 0,
            Pool::Green => 1,
        }
    }

    /// The value stored in `Backend::pool`.
    pub const fn wire(self) -> u8 {
        match self {
            Pool::Blue => POOL_BLUE,
            Pool::Green => POOL_GREEN,
        }
    }

    /// The pool a `Backend::pool` value names.
    pub const fn from_wire(pool: u8) -> Pool {
        if pool == POOL_BLUE { Pool::Blue } else { Pool::Green }
    }

    pub const fn other(self) -> Pool {
        match self {
            Pool::Blue => Pool::Green,
            Pool::Green => Pool::Blue,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pool::Blue => "blue",
            Pool::Green => "green",
        })
    }
}

impl FromStr for Pool {
    type Err = RatioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Pool::Blue),
            "green" => Ok(Pool::Green),
            other => Err(RatioError::UnknownPool(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RatioError {
    #[error("blue share {0} is over 100")]
    OutOfRange(u32),
    #[error("ratio {0:?} is not BLUE:GREEN with BLUE + GREEN = 100 (e.g. 30:70)")]
    Malformed(String),
    #[error("unknown pool {0:?} (expected blue or green)")]
    UnknownPool(String),
}

/// Share of new connections for the blue pool, in percent; green gets the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ratio {
    blue: u8,
}

impl Ratio {
    pub fn new(blue: u32) -> Result<Self, RatioError> {
        u8::try_from(blue)
            .ok()
            .filter(|&b| b <= 100)
            .map(|blue| Ratio { blue })
            .ok_or(RatioError::OutOfRange(blue))
    }

    /// All new connections to `pool`.
    pub const fn all_to(pool: Pool) -> Self {
        match pool {
            Pool::Blue => Ratio { blue: 100 },
            Pool::Green => Ratio { blue: 0 },
        }
    }

    /// Percent of new connections for `pool`.
    pub const fn share(self, pool: Pool) -> u8 {
        match pool {
            Pool::Blue => self.blue,
            Pool::Green => 100 - self.blue,
        }
    }

    /// The ratio actually applied: a pool that cannot take traffic hands its
    /// share to the other one instead of blackholing it.
    pub const fn effective(self, blue_can_serve: bool, green_can_serve: bool) -> Self {
        match (blue_can_serve, green_can_serve) {
            (true, false) => Ratio::all_to(Pool::Blue),
            (false, true) => Ratio::all_to(Pool::Green),
            _ => self,
        }
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.blue, 100 - self.blue)
    }
}

impl FromStr for Ratio {
    type Err = RatioError;

    /// `BLUE:GREEN`, e.g. `30:70`; the two must add up to 100.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || RatioError::Malformed(s.to_owned());
        let (blue, green) = s.split_once(':').ok_or_else(malformed)?;
        let blue: u32 = blue.trim().parse().map_err(|_| malformed())?;
        let green: u32 = green.trim().parse().map_err(|_| malformed())?;
        if blue + green != 100 {
            return Err(malformed());
        }
        Ratio::new(blue)
    }
}

/// Ratios and pools travel as their text form ("30:70", "blue") in the
/// admin protocol and the state file, as operators type them.
macro_rules! serde_as_text {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Ratio);
serde_as_text!(Pool);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_parses_blue_colon_green() {
        assert_eq!("30:70".parse::<Ratio>().unwrap().share(Pool::Blue), 30);
        assert_eq!("0:100".parse::<Ratio>().unwrap().share(Pool::Green), 100);
        assert_eq!(" 100 : 0 ".parse::<Ratio>().unwrap().to_string(), "100:0");
    }

    #[test]
    fn ratio_rejects_shares_not_adding_up_to_100() {
        for bad in ["30:60", "50", "a:b", "101:-1", "", "50:50:0"] {
            assert!(matches!(bad.parse::<Ratio>(), Err(RatioError::Malformed(_))), "{bad}");
        }
        assert_eq!(Ratio::new(101), Err(RatioError::OutOfRange(101)));
    }

    #[test]
    fn effective_ratio_moves_share_of_an_unservable_pool() {
        let r = Ratio::new(30).unwrap();
        assert_eq!(r.effective(true, true), r);
        assert_eq!(r.effective(false, true), Ratio::all_to(Pool::Green));
        assert_eq!(r.effective(true, false), Ratio::all_to(Pool::Blue));
        assert_eq!(r.effective(false, false), r);
    }

    #[test]
    fn pools_round_trip_through_the_backend_map_value() {
        for pool in [Pool::Blue, Pool::Green] {
            assert_eq!(Pool::from_wire(pool.wire()), pool);
        }
    }
}
