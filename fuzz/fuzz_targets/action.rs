//! The body of `/api-plugin/v4/action`, decoded as the plugin decodes it, then read the
//! way the actions read it: the params object and each param, the Model as a machine,
//! the agent name built from both, and `context/image-path` resolved as imageUpload
//! resolves it. Besides "never panics", it checks what must hold for every input:
//! a resolved file never lies outside RS_WEBROOT, a relative path never becomes a URL
//! with a `..` segment, and an agent name only ever holds what a runtime accepts.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use context_engines::actions::Action;
use context_engines::agents;
use context_engines::drp::{Context, Machine};
use context_engines::environment::Environment;
use context_engines::images::{self, ArchiveSource, Images};
use context_engines::params;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const FILESERVER: &str = "http://127.0.0.1:8091";

struct Fixture {
    webroot: PathBuf,
    images: Images,
}

/// A webroot with one archive inside and two ways out (a symlinked file and a symlinked
/// directory), which `resolve` must refuse.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("ce-fuzz-action-{}", std::process::id()));
        let files = root.join("webroot/files/contexts");
        let outside = root.join("outside");
        std::fs::create_dir_all(&files).expect("webroot");
        std::fs::create_dir_all(&outside).expect("outside dir");
        std::fs::write(files.join("a.tar"), b"archive").expect("archive");
        std::fs::write(outside.join("secret.tar"), b"not yours").expect("outside file");
        let _ = std::os::unix::fs::symlink(outside.join("secret.tar"), files.join("link.tar"));
        let _ = std::os::unix::fs::symlink(&outside, files.join("linkdir"));
        let webroot = root.join("webroot").canonicalize().expect("canonical webroot");
        let env = Environment {
            endpoint: Some("https://127.0.0.1:8092".to_string()),
            token: None,
            fileserver: Some(FILESERVER.to_string()),
            webroot: Some(webroot.clone()),
        };
        let images = Images::new(env, root.join("spool"), root.join("images-loaded.json")).expect("images");
        Fixture { webroot, images }
    })
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(action) = serde_json::from_slice::<Action>(data) else { return };
    let empty = Map::new();
    let params = match &action.params {
        Value::Null => &empty,
        other => match params::as_object(other) {
            Ok(map) => map,
            Err(e) => {
                assert!(e.to_string().starts_with("params must be"), "{e}");
                return;
            }
        },
    };

    let read = |name: &str| -> Option<String> {
        match params::optional_string(params, name) {
            Ok(Some(value)) => {
                assert!(!value.is_empty(), "an empty string counts as absent");
                assert_eq!(params::required_string(params, name).as_ref(), Ok(&value));
                Some(value)
            }
            Ok(None) => {
                let missing = params::required_string(params, name).expect_err("absent is missing");
                assert!(missing.to_string().contains(name), "{missing}");
                None
            }
            Err(e) => {
                assert!(e.to_string().contains(name), "a wrong type names its param: {e}");
                None
            }
        }
    };
    let context_name = read(params::CONTEXT_NAME);
    let image_name = read(params::IMAGE_NAME);
    let image_path = read(params::IMAGE_PATH);
    let _engine = read(params::ENGINE);

    // A name the reference check lets through is one no runtime would rewrite.
    if let Some(image) = &image_name
        && images::check_reference(image).is_ok()
    {
        // Docker's limits: 255 for the name, 128 for the tag (`host:port/name` has no tag).
        let (name, tag) = match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (image.as_str(), ""),
        };
        assert!(name.len() <= 255 && tag.len() <= 128, "{image:?}");
        assert!(image.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)), "{image:?}");
        assert!(!image.split('/').any(|part| part.is_empty() || part == ".."), "{image:?}");
    }

    // The Model as machine actions read it, and the agent it would name.
    if let Ok(machine) = serde_json::from_value::<Machine>(action.model.clone())
        && let Some(context_name) = &context_name
    {
        let context = Context { name: context_name.clone(), image: image_name.clone().unwrap_or_default(), ..Context::default() };
        let engine = agents::engine_for(&context, "docker");
        match agents::Agent::new(&machine.uuid, &context, &engine) {
            Ok(agent) => {
                assert_eq!(agent.name, format!("drp-{context_name}-{}", machine.uuid));
                assert!(agent.name.chars().all(valid_name_char), "agent name {:?}", agent.name);
                assert!(!context_name.is_empty());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }

    // imageUpload's path: a URL passes through; anything else stays inside the webroot
    // or becomes a file server URL without a `..` segment.
    if let Some(path) = &image_path {
        let fx = fixture();
        let is_url = path.starts_with("http://") || path.starts_with("https://");
        match fx.images.resolve(path) {
            Ok(ArchiveSource::File(file)) => {
                assert!(!is_url);
                assert!(file.starts_with(&fx.webroot), "{path:?} resolved outside the webroot: {}", file.display());
            }
            Ok(ArchiveSource::Url(url)) if is_url => assert_eq!(&url, path),
            Ok(ArchiveSource::Url(url)) => {
                let rest = url
                    .strip_prefix(&format!("{FILESERVER}/"))
                    .unwrap_or_else(|| panic!("{path:?} became a URL off the file server: {url}"));
                assert!(!rest.is_empty() && !rest.starts_with('/'), "{path:?} → {url}");
                assert!(rest.split('/').all(|segment| segment != ".."), "{path:?} → {url}");
            }
            Err(e) => assert!(e.to_string().contains("is not acceptable") || e.to_string().contains("reading"), "{e}"),
        }
    }
});
