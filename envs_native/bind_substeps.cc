// torchbeast.envs._native_step: the native substep loop of the `fast` Memory Maze env
// (torchbeast/envs/native_path.py). It takes the addresses of the mjModel/mjData that the Python
// `mujoco` package owns; MJ_VERSION_HEADER lets Python refuse a MuJoCo other than the one this was
// compiled against.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "substeps.h"

namespace py = pybind11;

namespace {

// (substeps done, warning index or -1, activated flags)
std::tuple<int, int, std::vector<bool>> RunSubstepsPy(std::uintptr_t model_address, std::uintptr_t data_address,
                                                      int num_substeps, bool legacy_step,
                                                      const std::vector<int>& target_geoms,
                                                      const std::vector<int>& target_materials,
                                                      const std::vector<bool>& activated) {
  if (model_address == 0 || data_address == 0) {
    throw std::invalid_argument("run_substeps: null mjModel or mjData address");
  }
  if (num_substeps < 1) {
    throw std::invalid_argument("run_substeps: num_substeps must be >= 1, got " + std::to_string(num_substeps));
  }
  if (target_geoms.size() != target_materials.size() || target_geoms.size() != activated.size()) {
    throw std::invalid_argument("run_substeps: target_geoms, target_materials and activated differ in length");
  }
  auto* m = reinterpret_cast<mjModel*>(model_address);
  auto* d = reinterpret_cast<mjData*>(data_address);
  std::vector<envs_native::Target> targets;
  targets.reserve(target_geoms.size());
  for (size_t i = 0; i < target_geoms.size(); ++i) {
    if (target_geoms[i] < 0 || target_geoms[i] >= m->ngeom || target_materials[i] < 0 ||
        target_materials[i] >= m->nmat) {
      throw std::invalid_argument("run_substeps: target " + std::to_string(i) + " has geom " +
                                  std::to_string(target_geoms[i]) + " / material " +
                                  std::to_string(target_materials[i]) + ", outside the model");
    }
    targets.push_back({target_geoms[i], target_materials[i], static_cast<bool>(activated[i])});
  }
  envs_native::SubstepsResult result;
  {
    py::gil_scoped_release release;
    result = envs_native::RunSubsteps(m, d, num_substeps, legacy_step, targets);
  }
  std::vector<bool> out(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    out[i] = targets[i].activated;
  }
  return {result.substeps_done, result.warning, out};
}

}  // namespace

PYBIND11_MODULE(_native_step, m) {
  m.doc() = "Memory Maze's physics substeps and target-contact test, run natively on MuJoCo's mjModel/mjData.";
  m.attr("MJ_VERSION_HEADER") = mjVERSION_HEADER;
  m.def("run_substeps", &RunSubstepsPy, py::arg("model_address"), py::arg("data_address"), py::arg("num_substeps"),
        py::arg("legacy_step"), py::arg("target_geoms"), py::arg("target_materials"), py::arg("activated"),
        "Run `num_substeps` physics substeps with the walker's and the targets' after_substep hooks.\n"
        "Returns (substeps done, index of the MuJoCo warning that stopped them or -1, activated flags).");
}
