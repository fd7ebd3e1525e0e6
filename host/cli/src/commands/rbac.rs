//! `infergate rbac`: the RBAC objects the controller and the picker need.

use crate::RbacArgs;

pub fn run(args: RbacArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        infergate_kube::rbac::yaml(
            &args.namespace,
            infergate_kube::rbac::Needs {
                inference_extension: args.enable_inference_extension,
                deploy_envoys: args.deploy_envoys,
                manage_pickers: args.manage_pickers,
            }
        )
    );
    Ok(())
}
