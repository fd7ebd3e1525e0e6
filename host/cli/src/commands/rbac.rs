//! `infergate rbac`: the RBAC objects the controller and the picker need.

use crate::RbacArgs;

pub fn run(args: RbacArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        infergate_kube::rbac::yaml(&args.namespace, args.enable_inference_extension)
    );
    Ok(())
}
