//! Per-CPU counters kept by the XDP programs.
//!
//! Each program owns one `PerCpuArray<u64>` named [`crate::maps::COUNTERS`]; the index of a
//! counter is its enum discriminant, and userspace sums the CPUs and prints [`Counter::name`].

/// A set of counters one program keeps: the index space of its `COUNTERS` map.
pub trait Counter: Copy + 'static {
    /// Every counter, in index order.
    const ALL: &'static [Self];
    /// The map index.
    fn index(self) -> u32;
    /// The name printed in stats lines (`name=value`).
    fn name(self) -> &'static str;
}

macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis enum $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $name:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        $vis enum $ty { $($(#[$vmeta])* $variant,)+ }

        impl Counter for $ty {
            const ALL: &'static [Self] = &[$(Self::$variant,)+];
            #[inline(always)]
            fn index(self) -> u32 { self as u32 }
            fn name(self) -> &'static str { match self { $(Self::$variant => $name,)+ } }
        }
    };
}

counters! {
    /// Counters of the copier's XDP program on the online interface.
    pub enum CopierCounter {
        /// Every frame the program ran for.
        Seen = "seen",
        /// TCP segments addressed to an online endpoint.
        Matched = "matched",
        /// Matching frames copied into the capture ring.
        Copied = "copied",
        /// Copied frames longer than a capture record holds (their tail is lost).
        Truncated = "truncated",
        /// Matching frames not copied: the ring was full (userspace fell behind).
        RingFull = "ring_full",
        /// Frames handed on to the kernel stack untouched (copy mode: all of them).
        Passed = "passed",
        /// Frames that claimed to be IP/TCP but whose headers were truncated or inconsistent.
        Malformed = "malformed",
        /// Mirror mode: matching frames redirected into the AF_XDP socket of their RX queue.
        Redirected = "redirected",
        /// Mirror mode: matching frames of an RX queue with no AF_XDP socket.
        NoSocket = "no_socket",
        /// Mirror mode with `--mirror-other drop`: frames dropped.
        Dropped = "dropped",
        /// Copy mode, comparing answers: the online server's segments copied on egress (TC),
        /// production's answers.
        AnswersCopied = "answers_copied",
        /// Mirror mode with `--decap`: tunnel packets whose mirrored frame was looked at.
        Decapsulated = "decapsulated",
    }
}

counters! {
    /// Counters of the intercept's programs: XDP on the assistant's interface, or TC egress on
    /// the test host's (`--on-target`).
    pub enum InterceptCounter {
        /// Every frame the program ran for.
        Seen = "seen",
        /// TCP segments sent by a test-server endpoint.
        Matched = "matched",
        /// Frames redirected into an AF_XDP socket.
        Redirected = "redirected",
        /// Matching frames on an RX queue with no AF_XDP socket bound: passed to the kernel.
        NoSocket = "no_socket",
        /// Frames handed on to the kernel stack untouched.
        Passed = "passed",
        /// Frames that claimed to be IP/TCP but whose headers were truncated or inconsistent.
        Malformed = "malformed",
        /// On the test host: replies to an owned client endpoint, dropped on egress; on an
        /// assistant host, jumbo replies (several buffers) copied through the ring and dropped.
        Stolen = "stolen",
        /// Replies stolen but not copied to userspace (the ring was full).
        Lost = "lost",
        /// Stolen replies longer than a capture record (GSO packets), copied without their
        /// payload's tail.
        Truncated = "truncated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indices_are_dense<C: Counter>() {
        for (i, c) in C::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i, "{} is out of place", c.name());
        }
    }

    #[test]
    fn counter_indices_are_dense_and_in_order() {
        indices_are_dense::<CopierCounter>();
        indices_are_dense::<InterceptCounter>();
    }

    fn names_are_unique<C: Counter>() {
        let names: Vec<_> = C::ALL.iter().map(|c| c.name()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "{names:?}");
    }

    #[test]
    fn counter_names_are_unique() {
        names_are_unique::<CopierCounter>();
        names_are_unique::<InterceptCounter>();
    }
}
