//! A test component. The snapshot's controller name selects a misbehaviour:
//! `test:loop` spins forever, `test:alloc` allocates without end,
//! `test:trap` panics, `test:error` returns an error, `test:dangling`
//! returns routes that name rules their virtual host lacks. Any other name
//! translates as the real component does and adds the response header
//! `x-infergate-component: test` to every route, so a swap is visible on
//! the wire. Built with the feature `always-loop` or `always-alloc`, it
//! misbehaves on every snapshot.

// The contract's guest-side bindings exist only when built for WebAssembly.
#![cfg(target_family = "wasm")]

use infergate_model::{Guest, HeaderValue, Output, RouteAction, Snapshot, TranslateError};

struct Misbehaving;

impl Guest for Misbehaving {
    fn translate(input: Snapshot) -> Result<Output, TranslateError> {
        let behaviour = if cfg!(feature = "always-loop") {
            "test:loop"
        } else if cfg!(feature = "always-alloc") {
            "test:alloc"
        } else {
            input.settings.controller_name.as_str()
        };
        match behaviour {
            "test:loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "test:alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "test:trap" => panic!("deliberate trap"),
            "test:error" => Err(TranslateError {
                message: "deliberate error".into(),
            }),
            "test:dangling" => {
                let mut output = infergate_translate::translate(&input)?;
                for gateway in &mut output.gateways {
                    for listener in &mut gateway.listeners {
                        for chain in &mut listener.filter_chains {
                            for host in &mut chain.virtual_hosts {
                                host.rules.clear();
                            }
                        }
                    }
                }
                Ok(output)
            }
            _ => {
                let mut output = infergate_translate::translate(&input)?;
                for gateway in &mut output.gateways {
                    for listener in &mut gateway.listeners {
                        for chain in &mut listener.filter_chains {
                            for host in &mut chain.virtual_hosts {
                                for rule in &mut host.rules {
                                    if !matches!(rule.action, RouteAction::Redirect(_)) {
                                        rule.response_headers.set.push(HeaderValue {
                                            name: "x-infergate-component".into(),
                                            value: "test".into(),
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(output)
            }
        }
    }
}

infergate_model::export_translator!(Misbehaving with_types_in infergate_model);
