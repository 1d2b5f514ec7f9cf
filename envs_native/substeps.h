// The physics substeps of one Memory Maze control step, run natively on MuJoCo's own
// mjModel/mjData (the ones the Python `mujoco` package holds), in the order dm_control's composer
// runs them: for each substep, Physics.step() (checking MuJoCo's warning counters as
// Physics.check_invalid_state does), then the after_substep hooks of the walker (mj_subtreeVel) and
// of the target spheres (a target activates when its geom appears in any contact).
#ifndef ENVS_NATIVE_SUBSTEPS_H_
#define ENVS_NATIVE_SUBSTEPS_H_

#include <mujoco/mujoco.h>

#include <vector>

namespace envs_native {

// One target sphere: its geom (whose contacts activate it) and its material (whose alpha drops to
// 0 when it activates, as TargetSphere._update_activation does).
struct Target {
  int geom_id;
  int material_id;
  bool activated;
};

struct SubstepsResult {
  int substeps_done;  // substeps completed; fewer than asked only when a warning stopped them
  int warning;        // the mjtWarning index whose counter rose, or -1 when none did
};

// Runs `num_substeps` substeps on (m, d). `legacy_step` selects dm_control's legacy stepping
// (mj_step2 then mj_step1, or mj_step then mj_step1 for RK4) over a plain mj_step. Updates
// `targets[i].activated` (and the materials' alpha in m) in place. Stops after the substep whose
// step raised a MuJoCo warning, before that substep's hooks, as the Python PhysicsError would.
SubstepsResult RunSubsteps(mjModel* m, mjData* d, int num_substeps, bool legacy_step, std::vector<Target>& targets);

}  // namespace envs_native

#endif  // ENVS_NATIVE_SUBSTEPS_H_
