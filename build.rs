//! Generates `include/missionstream.h` from the Rust sources with cbindgen.
//! The header is committed; `make check-header` fails when it is stale.

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    match cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(format!("{dir}/include/missionstream.h"));
        }
        Err(e) => {
            // A syntax error in src/ is reported by rustc with better context.
            println!("cargo:warning=header not regenerated: {e}");
        }
    }
}
