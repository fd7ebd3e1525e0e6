//! Exports `infergate:translator/translate` at version 0.0.9, which no
//! host of this repository speaks.

wit_bindgen::generate!({
    inline: "
        package infergate:translator@0.0.9;
        interface translate {
            translate: func(input: string) -> string;
        }
        world translator {
            export translate;
        }
    ",
});

struct Old;

impl exports::infergate::translator::translate::Guest for Old {
    fn translate(input: String) -> String {
        input
    }
}

export!(Old);
