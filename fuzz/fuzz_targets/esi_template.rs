//! An origin's `text/*` body, parsed for ESI when it is stored, and every include's
//! `src` resolved against the page: any bytes. Parsing must never panic, and the
//! template's literals must give back every byte outside the tags it consumed.
#![no_main]
use floodgate::esi::fragment::Target;
use floodgate::esi::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(template) = Template::parse(data, 1) {
        for include in template.includes() {
            let _ = Target::resolve(&include.src, "/page.html");
            if let Some(alt) = &include.alt {
                let _ = Target::resolve(alt, "/a/b/page.html?x=1");
            }
        }
        let _ = template.len_bytes();
    }
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = Target::resolve(src, "/page.html");
    }
});
