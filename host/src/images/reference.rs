//! Image references, parsed once by the OCI distribution grammar (`oci-spec`'s
//! `Reference`, the Rust port of Docker's `distribution/reference`) rather than by hand:
//! `[host[:port]/]path[:tag]`, path components lowercase. Runtimes accept some malformed
//! names by silently rewriting them, so the plugin checks before they see one.

use std::str::FromStr;

use oci_spec::distribution::Reference;

/// The longest name (`[host[:port]/]path`) Docker accepts.
const NAME_MAX: usize = 255;

/// A checked image reference, keeping the spelling it was given: engines name images
/// exactly as the Context does (a runtime's own spelling, like Podman's `localhost/`, is
/// that engine's concern).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    written: String,
    parsed: Reference,
}

impl ImageRef {
    /// No digests: an agent's image is a loaded one, found by name.
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        let refuse = |why: &str| {
            format!(
                "image name '{image}' is not a valid reference ({why}): expected [host[:port]/]path[:tag], path components \
                 lowercase letters and digits joined by '.', '_', '__' or '-'"
            )
        };
        // The grammar is ASCII, but oci-spec's regex spells a tag's characters `\w`, which
        // Rust's regex reads as Unicode: `foo:kӘk` would pass and no runtime accepts it.
        if let Some(c) = image.chars().find(|c| !c.is_ascii()) {
            return Err(refuse(&format!("'{c}' is not an ASCII character")));
        }
        let parsed = Reference::from_str(image).map_err(|e| refuse(&e.to_string()))?;
        if parsed.digest().is_some() {
            return Err(refuse("a digest names no loaded image; use a tag"));
        }
        let reference = ImageRef { written: image.to_string(), parsed };
        // Docker's limit is on the name as written, registry included; oci-spec's is on
        // the repository alone.
        if reference.repository_and_tag().0.len() > NAME_MAX {
            return Err(refuse(&format!("the name before the tag is over {NAME_MAX} characters")));
        }
        Ok(reference)
    }

    /// Whether the reference names its registry (`reg.example.com/x`, `localhost/x`),
    /// as opposed to a short name a runtime resolves itself.
    pub fn has_registry(&self) -> bool {
        self.written.starts_with(&format!("{}/", self.parsed.registry()))
    }

    /// The repository as written and the tag (`latest` when none), as a tag request
    /// wants them.
    pub fn repository_and_tag(&self) -> (&str, &str) {
        let tag = self.parsed.tag().unwrap_or("latest");
        let repository = self.written.strip_suffix(&format!(":{tag}")).unwrap_or(&self.written);
        (repository, tag)
    }
}

/// Whether `image` is a reference an agent may be started from, and why not.
pub fn check_reference(image: &str) -> Result<(), String> {
    ImageRef::parse(image).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_references_are_refused() {
        for good in
            ["foo", "foo/bar:1", "reg:5000/foo/bar:1.2", "localhost/a_b-c", "Reg.Example.com/a__b/c--d:V1_x-2", "ce-test/cet-7d47:1"]
        {
            assert!(check_reference(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "x:tag:extra",
            "a b",
            "foo:",
            "foo/",
            "x@sha256:abc",
            "../../../../etc/passwd",
            "upper/Case:1",
            "-leading:1",
            "a/.hidden:1",
            "a._b",
            "foo:-tag",
            "a//b",
            "foo:kӘk",
            "fóo:1",
        ] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
        // Docker's limits: 255 for the name, 128 for the tag.
        let longest = format!("{}/{}", "a".repeat(100), "b".repeat(154));
        assert!(check_reference(&format!("{longest}:{}", "t".repeat(128))).is_ok());
        assert!(check_reference(&format!("{longest}b")).is_err());
        assert!(check_reference(&format!("reg.example.com/{}", "b".repeat(250))).expect_err("long").contains("over 255"));
        assert!(check_reference(&format!("a:{}", "t".repeat(129))).is_err());
        let digest = format!("foo@sha256:{}", "a".repeat(64));
        assert!(check_reference(&digest).expect_err("digest").contains("use a tag"));
    }

    #[test]
    fn registries_and_tags_split_as_written() {
        let split = |image: &str| {
            let r = ImageRef::parse(image).expect("valid");
            (r.has_registry(), r.repository_and_tag().0.to_string(), r.repository_and_tag().1.to_string())
        };
        assert_eq!(split("foo/bar:1"), (false, "foo/bar".into(), "1".into()));
        assert_eq!(split("foo/bar"), (false, "foo/bar".into(), "latest".into()));
        assert_eq!(split("reg:5000/foo"), (true, "reg:5000/foo".into(), "latest".into()));
        assert_eq!(split("reg:5000/foo:2"), (true, "reg:5000/foo".into(), "2".into()));
        assert_eq!(split("localhost/x:3"), (true, "localhost/x".into(), "3".into()));
        assert_eq!(split("quay.io/x:1"), (true, "quay.io/x".into(), "1".into()));
        assert_eq!(split("docker.io/library/x"), (true, "docker.io/library/x".into(), "latest".into()));
    }
}
