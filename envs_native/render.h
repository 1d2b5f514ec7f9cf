// Rendering one Memory Maze camera frame natively, with the same MuJoCo calls dm_control's
// Camera.render() makes (mjv_updateScene, mjr_render, mjr_readPixels), and the episode contexts
// that share one upload of the textures (see torchbeast/envs/native_render.py).
//
// Before mjr_render, CullInvisibleGeoms may drop from the scene the geoms that provably cannot
// change a pixel, in a scene without shadows or reflections (the only passes that draw a geom from
// another viewpoint than the camera's): those wholly outside the camera's view frustum, and those
// wholly behind an opaque front-facing plane and inside its on-screen rectangle (both by margins of
// pixels and depth-buffer steps). mjr_render draws every geom with its own state (matrix,
// material, texture) and orders the transparent ones with a stable sort, so a geom that yields no
// fragment, or only fragments that fail the depth test against an opaque geom drawn in the same
// frame, leaves the rest of the frame bit for bit as it was.
#ifndef ENVS_NATIVE_RENDER_H_
#define ENVS_NATIVE_RENDER_H_

#include <mujoco/mujoco.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace envs_native {

struct CullResult {
  bool culled;  // false: the scene has shadows, reflections or a camera we do not cull for
  int kept;     // geoms left in the scene
  int removed;  // geoms dropped
};

// Drops from `scn` (as mjv_updateScene left it) the geoms that cannot reach a pixel of a
// `width` x `height` viewport, keeping the others in their order. The tests are conservative: the
// frustum is widened by a margin, occluders are shrunk by one, and only planes (their rectangles)
// and spheres, ellipsoids, capsules, cylinders and boxes (their bounding spheres) are ever dropped;
// geoms with labels, infinite planes and every other type are always kept.
CullResult CullInvisibleGeoms(const mjModel* m, mjvScene* scn, int width, int height);

// One OpenGL context's rendering state for a succession of episode models: a *master* mjrContext
// holding the uploaded textures, and per episode an mjrContext whose texture names point at the
// master's (when its model was compiled with placeholder textures). Every method needs the OpenGL
// context current on the calling thread.
class EpisodeRenderer {
 public:
  EpisodeRenderer();
  ~EpisodeRenderer();  // Frees nothing on the GPU (no context may be current): call Close().
  EpisodeRenderer(const EpisodeRenderer&) = delete;
  EpisodeRenderer& operator=(const EpisodeRenderer&) = delete;

  bool has_master() const { return master_ != nullptr; }

  // Makes the contexts and the scene (`max_geom` geoms) for a newly compiled model. With
  // `placeholder_textures`, the model's textures are 1x1 stand-ins of the master's (same count
  // and types, checked), and the episode context renders with the master's texture objects.
  void NewEpisode(const mjModel* m, int max_geom, bool placeholder_textures);

  // Renders fixed camera `camera_id` into `rgb` (height x width x 3, top row first).
  // Returns what culling did (culled=false when `cull` is false).
  CullResult Render(const mjModel* m, mjData* d, int camera_id, int width, int height, bool cull, std::uint8_t* rgb);

  // Frees the episode and master contexts and the scene.
  void Close();

 private:
  void FreeEpisodeContext();

  std::unique_ptr<mjrContext> master_;
  std::unique_ptr<mjrContext> episode_;          // null while the master is the episode's context
  std::vector<unsigned int> placeholder_names_;  // the episode context's own texture names
  std::unique_ptr<mjvScene> scene_;
  std::vector<std::uint8_t> bottom_up_;  // mjr_readPixels' rows, bottom first
};

}  // namespace envs_native

#endif  // ENVS_NATIVE_RENDER_H_
