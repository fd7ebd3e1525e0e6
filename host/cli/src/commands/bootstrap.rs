//! `infergate bootstrap`: the Envoy bootstrap that points an Envoy at an
//! infergate xDS server.

use crate::BootstrapArgs;

pub fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        crate::envoy::bootstrap(&args.node, args.xds_address, args.admin_port)
    );
    Ok(())
}
