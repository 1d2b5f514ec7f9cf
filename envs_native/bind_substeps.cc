// torchbeast.envs._native_step: the native substep loop and camera renderer of the `fast` Memory
// Maze env (torchbeast/envs/native_path.py, native_render.py). It takes the addresses of the
// mjModel/mjData that the Python `mujoco` package owns; MJ_VERSION_HEADER lets Python refuse a
// MuJoCo other than the one this was compiled against.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "render.h"
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

const mjModel* ModelAt(std::uintptr_t address) {
  if (address == 0) throw std::invalid_argument("null mjModel address");
  return reinterpret_cast<const mjModel*>(address);
}

}  // namespace

PYBIND11_MODULE(_native_step, m) {
  m.doc() = "Memory Maze's physics substeps and target-contact test, run natively on MuJoCo's mjModel/mjData.";
  m.attr("MJ_VERSION_HEADER") = mjVERSION_HEADER;
  m.def("run_substeps", &RunSubstepsPy, py::arg("model_address"), py::arg("data_address"), py::arg("num_substeps"),
        py::arg("legacy_step"), py::arg("target_geoms"), py::arg("target_materials"), py::arg("activated"),
        "Run `num_substeps` physics substeps with the walker's and the targets' after_substep hooks.\n"
        "Returns (substeps done, index of the MuJoCo warning that stopped them or -1, activated flags).");

  using envs_native::CullResult;
  using envs_native::EpisodeRenderer;
  py::class_<CullResult>(m, "CullResult")
      .def_readonly("culled", &CullResult::culled)
      .def_readonly("kept", &CullResult::kept)
      .def_readonly("removed", &CullResult::removed);
  py::class_<EpisodeRenderer>(m, "EpisodeRenderer",
                              "MjrContexts for a succession of episode models sharing one upload of the textures,\n"
                              "and a scene; every method needs the OpenGL context current on the calling thread.")
      .def(py::init<>())
      .def_property_readonly("has_master", &EpisodeRenderer::has_master,
                             "Whether a master context holds textures a placeholder model can share.")
      .def(
          "new_episode",
          [](EpisodeRenderer& self, std::uintptr_t model_address, int max_geom, bool placeholder_textures) {
            if (max_geom < 1) throw std::invalid_argument("max_geom must be >= 1");
            self.NewEpisode(ModelAt(model_address), max_geom, placeholder_textures);
          },
          py::arg("model_address"), py::arg("max_geom"), py::arg("placeholder_textures"),
          "Make the rendering contexts and scene of a newly compiled model.")
      .def(
          "render",
          [](EpisodeRenderer& self, std::uintptr_t model_address, std::uintptr_t data_address, int camera_id, int width,
             int height, bool cull) {
            if (data_address == 0) throw std::invalid_argument("null mjData address");
            if (width <= 0 || height <= 0) throw std::invalid_argument("width and height must be >= 1");
            py::array_t<std::uint8_t> frame({height, width, 3});
            std::uint8_t* out = frame.mutable_data();
            CullResult result;
            {
              py::gil_scoped_release release;
              result = self.Render(ModelAt(model_address), reinterpret_cast<mjData*>(data_address), camera_id, width,
                                   height, cull, out);
            }
            return py::make_tuple(frame, result);
          },
          py::arg("model_address"), py::arg("data_address"), py::arg("camera_id"), py::arg("width"), py::arg("height"),
          py::arg("cull"),
          "Render fixed camera `camera_id` as dm_control's Camera.render() does: (frame (height, width, 3)\n"
          "uint8 top row first, CullResult). With `cull`, geoms that cannot reach a pixel are left out first.")
      .def("close", &EpisodeRenderer::Close, "Free the contexts and the scene.");
}
