#include "substeps.h"

#include <algorithm>

namespace envs_native {
namespace {

// dm_control's Physics.step() with legacy_step: finish the step begun by the previous mj_step1,
// then bring position- and velocity-dependent fields up to date with mj_step1.
void PhysicsStep(const mjModel* m, mjData* d, bool legacy_step) {
  if (!legacy_step) {
    mj_step(m, d);
    return;
  }
  if (m->opt.integrator != mjINT_RK4) {
    mj_step2(m, d);
  } else {
    mj_step(m, d);
  }
  mj_step1(m, d);
}

bool InContact(const mjData* d, int geom_id) {
  for (int i = 0; i < d->ncon; ++i) {
    if (d->contact[i].geom[0] == geom_id || d->contact[i].geom[1] == geom_id) {
      return true;
    }
  }
  return false;
}

}  // namespace

SubstepsResult RunSubsteps(mjModel* m, mjData* d, int num_substeps, bool legacy_step, std::vector<Target>& targets) {
  int warnings_before[mjNWARNING];
  for (int substep = 0; substep < num_substeps; ++substep) {
    for (int w = 0; w < mjNWARNING; ++w) {
      warnings_before[w] = d->warning[w].number;
    }
    PhysicsStep(m, d, legacy_step);
    for (int w = 0; w < mjNWARNING; ++w) {
      if (d->warning[w].number > warnings_before[w]) {
        return {substep, w};
      }
    }
    // The walker's after_substep: subtree velocities are only computed on demand since MuJoCo 2.
    mj_subtreeVel(m, d);
    // The targets' after_substep, in entity order.
    for (Target& target : targets) {
      if (!target.activated && InContact(d, target.geom_id)) {
        target.activated = true;
        m->mat_rgba[4 * target.material_id + 3] = 0.0f;
      }
    }
  }
  return {num_substeps, -1};
}

}  // namespace envs_native
