//! Generates the foreign-language bindings (Kotlin, Swift, Python) from the built library.

fn main() {
    uniffi::uniffi_bindgen_main()
}
