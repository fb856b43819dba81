//! Test engine `future`: a component for `context-engines:engine@0.3.0`, a version this
//! host does not speak (it speaks 0.1.0 and 0.2.0; 0.x: another minor is another major).
//! Loading it must fail with an error that says so and names what it exports, in
//! `engines check` and in the engines directory alike.

wit_bindgen::generate!({
    inline: r#"
        package context-engines:engine@0.3.0;

        interface lifecycle {
            describe: func() -> string;
        }

        world engine {
            export lifecycle;
        }
    "#,
});

struct Future;

impl exports::context_engines::engine::lifecycle::Guest for Future {
    fn describe() -> String {
        "future".to_string()
    }
}

export!(Future);
