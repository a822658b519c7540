//! Envoy's response flags (`%RESPONSE_FLAGS%`): why a request or connection did not get a
//! plain upstream answer. One small bitset carries them from the refusal or failure that set
//! them to both the `response_flags` metric label and the access log, so the two never
//! disagree.

use std::fmt;

/// A set of Envoy response flags; empty prints as `-`, several as `UF,URX` in Envoy's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flags(u32);

/// Declares each flag once: its bit, its doc, and its place in the order Envoy prints them
/// (`ResponseFlagUtils::toShortString`), which is the order of [`NAMES`].
macro_rules! flags {
    ($($(#[doc = $doc:literal])* $name:ident = $bit:literal,)*) => {
        impl Flags {
            $($(#[doc = $doc])* pub const $name: Flags = Flags(1 << $bit);)*
        }

        /// Each flag and its short name, in the order Envoy prints them.
        const NAMES: &[(Flags, &str)] = &[$((Flags::$name, stringify!($name)),)*];
    };
}

flags! {
    /// No healthy upstream: the cluster has no endpoints.
    UH = 0,
    /// Upstream request timeout: no response head in time (504).
    UT = 1,
    /// Local reset (e.g. a limit closed the stream).
    LR = 2,
    /// Upstream connection failure, including a failed TLS handshake this proxy originated.
    UF = 3,
    /// Upstream connection termination: the upstream closed or reset mid-exchange.
    UC = 4,
    /// Upstream overflow: a connection or request limit refused it.
    UO = 5,
    /// No route: no service, virtual host or VirtualService rule for it, or refused by
    /// REGISTRY_ONLY.
    NR = 6,
    /// A VirtualService fault delayed the request.
    DI = 7,
    /// A VirtualService fault aborted the request.
    FI = 8,
    /// Rate limited.
    RL = 9,
    /// Downstream connection termination: the client went away before the response ended.
    DC = 10,
    /// Upstream retry limit exceeded: the last of the VirtualService's retries failed too.
    URX = 11,
    /// Stream idle timeout.
    SI = 12,
    /// Downstream protocol error: the client's request could not be parsed or was too large.
    DPE = 13,
    /// Upstream protocol error: the upstream's response could not be framed safely.
    UPE = 16,
    /// No cluster: a VirtualService destination that does not exist.
    NC = 14,
    /// DNS resolution of the upstream failed.
    DF = 15,
}

impl Flags {
    pub const NONE: Flags = Flags(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flags named in `text` (`UF`, `UF,URX`); unknown names are ignored.
    pub fn parse(text: &str) -> Flags {
        text.split(',')
            .filter_map(|t| NAMES.iter().find(|(_, n)| *n == t.trim()).map(|(f, _)| *f))
            .fold(Flags::NONE, |a, b| a | b)
    }

    /// The flag of a refusal or failure given as Envoy's short name (`None` for none).
    pub fn of(name: Option<&str>) -> Flags {
        name.map_or(Flags::NONE, Flags::parse)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;

    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for &(flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_bit_of_its_own_and_prints_in_envoys_order() {
        let all = NAMES.iter().fold(Flags::NONE, |seen, &(flag, _)| {
            assert!(!seen.contains(flag), "{flag:?} shares a bit");
            seen | flag
        });
        assert_eq!(all.0, (1 << NAMES.len()) - 1);
        // Envoy prints UPE before NC and DF though its bit is higher.
        assert_eq!(
            (Flags::NC | Flags::UPE | Flags::DPE | Flags::DF).to_string(),
            "DPE,UPE,NC,DF"
        );
    }

    #[test]
    fn prints_as_envoy_does() {
        assert_eq!(Flags::NONE.to_string(), "-");
        assert_eq!(Flags::NR.to_string(), "NR");
        assert_eq!((Flags::URX | Flags::UF).to_string(), "UF,URX");
        assert_eq!((Flags::DF | Flags::DC | Flags::UH).to_string(), "UH,DC,DF");
    }

    #[test]
    fn parses_what_it_prints_and_every_name() {
        for &(flag, name) in NAMES {
            assert_eq!(Flags::parse(name), flag, "{name}");
            assert_eq!(flag.to_string(), name);
        }
        assert_eq!(Flags::parse("UF,URX"), Flags::UF | Flags::URX);
        assert_eq!(Flags::parse("-"), Flags::NONE);
        assert_eq!(Flags::of(None), Flags::NONE);
        assert_eq!(Flags::of(Some("DF")), Flags::DF);
        let all = NAMES.iter().fold(Flags::NONE, |a, (f, _)| a | *f);
        assert_eq!(Flags::parse(&all.to_string()), all);
    }
}
