//! `infergate translate`: YAML in, Envoy resources (or the IR) and statuses
//! out, offline.

use crate::{Format, TranslateArgs, files, pipeline, standalone};

pub fn run(args: TranslateArgs) -> anyhow::Result<()> {
    let resources = files::read_resources_with(&args.file, !args.skip_crd_checks)
        .map_err(|errors| pipeline::all_errors(&errors))?;
    let snapshot = pipeline::snapshot(&resources, &args.translation, standalone::DEFAULT_ADDRESS)?;
    let output = if args.native {
        infergate_translate::translate(&snapshot)
            .map_err(|e| anyhow::anyhow!("translation failed: {}", e.message))?
    } else {
        let translator = pipeline::Translation::load(&args.translation)?;
        translator.translate(&snapshot)?
    };
    let value = if args.ir {
        serde_json::to_value(&output)?
    } else {
        // Secrets are shown with their certificates, never their keys.
        let certificates = resources.certificates();
        let mut gateways = Vec::new();
        for gateway in &output.gateways {
            gateways.push(
                infergate_xds::json::gateway_to_json(gateway, &certificates)
                    .map_err(|e| anyhow::anyhow!("Gateway {}: {e}", gateway.node_id))?,
            );
        }
        serde_json::json!({ "gateways": gateways, "statuses": output.statuses })
    };
    let text = match args.output {
        Format::Yaml => serde_yaml_ng::to_string(&value)?,
        Format::Json => serde_json::to_string_pretty(&value)? + "\n",
    };
    print!("{text}");
    Ok(())
}
