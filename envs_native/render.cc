#include "render.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace envs_native {
namespace {

constexpr int kFontScale = mjFONTSCALE_150;  // dm_control's MjrContext default
// Widening of the frustum's sides (a fraction of its width and height, ~3 pixels of a 64-pixel
// frame) and of bounding radii: geoms near an edge are always kept, whatever the rounding.
constexpr float kFrustumMargin = 0.05f;
constexpr float kRadiusMargin = 1.01f;
constexpr float kDistanceSlack = 1e-3f;

// A frustum side as n . (p - eye) >= offset, n normalised, in world coordinates.
struct HalfSpace {
  float normal[3];
  float offset;
};

float Dot(const float* a, const float* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

void Cross(const float* a, const float* b, float* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

bool Normalize(float* v) {
  float norm = std::sqrt(Dot(v, v));
  if (!(norm > 0.0f) || !std::isfinite(norm)) return false;
  v[0] /= norm;
  v[1] /= norm;
  v[2] /= norm;
  return true;
}

// The camera-space half-space a*x + b*y + c*z >= offset, mapped to world coordinates through the
// camera basis (right, up, forward) and normalised.
bool MakeHalfSpace(const float* right, const float* up, const float* forward, float a, float b, float c, float offset,
                   HalfSpace* out) {
  for (int i = 0; i < 3; ++i) {
    out->normal[i] = a * right[i] + b * up[i] + c * forward[i];
  }
  float norm = std::sqrt(Dot(out->normal, out->normal));
  if (!(norm > 0.0f)) return false;
  for (float& v : out->normal) v /= norm;
  out->offset = offset / norm;
  return true;
}

// Whether the scene draws any geom from another viewpoint than the camera's.
bool HasShadowsOrReflections(const mjvScene* scn) {
  if (scn->flags[mjRND_SHADOW]) {
    for (int i = 0; i < scn->nlight; ++i) {
      if (scn->lights[i].castshadow) return true;
    }
  }
  if (scn->flags[mjRND_REFLECTION]) {
    for (int i = 0; i < scn->ngeom; ++i) {
      const mjvGeom& g = scn->geoms[i];
      if ((g.type == mjGEOM_PLANE || g.type == mjGEOM_BOX) && g.reflectance > 0) return true;
    }
  }
  return false;
}

// Whether geom `g` lies wholly outside one of the half-spaces, relative to `eye`.
// The radius of a sphere around the geom's centre that holds all of it, with the culling margins;
// false for geom types without one (meshes, lines, arrows, flexes, skins, ...) or a bad size.
bool BoundingRadius(const mjvGeom& g, float* radius) {
  const float* size = g.size;
  switch (g.type) {
    case mjGEOM_SPHERE:
    case mjGEOM_ELLIPSOID:
      *radius = std::max({size[0], size[1], size[2]});
      break;
    case mjGEOM_CAPSULE:
      *radius = std::max(size[0], size[1]) + size[2];
      break;
    case mjGEOM_CYLINDER:
      *radius = std::sqrt(std::max(size[0], size[1]) * std::max(size[0], size[1]) + size[2] * size[2]);
      break;
    case mjGEOM_BOX:
      *radius = std::sqrt(Dot(size, size));
      break;
    default:
      return false;
  }
  if (!std::isfinite(*radius) || *radius < 0.0f) return false;
  *radius = *radius * kRadiusMargin + kDistanceSlack;
  return true;
}

bool OutsideFrustum(const mjModel* m, const mjvGeom& g, const float* eye, const HalfSpace* sides, int nsides) {
  if (g.label[0] != '\0') return false;  // its label could show even if it does not
  float center[3] = {g.pos[0] - eye[0], g.pos[1] - eye[1], g.pos[2] - eye[2]};
  if (g.type == mjGEOM_PLANE) {
    // The plane's rectangle: mjr_render draws a plane with a display list of its model size
    // (dataid >= 0) or a unit quad scaled by the geom size; take the larger of the two.
    float sx = g.size[0], sy = g.size[1];
    if (g.dataid >= 0) {
      if (g.objtype != mjOBJ_GEOM || g.objid < 0 || g.objid >= m->ngeom) return false;
      sx = std::max(sx, static_cast<float>(m->geom_size[3 * g.objid]));
      sy = std::max(sy, static_cast<float>(m->geom_size[3 * g.objid + 1]));
    }
    if (!(sx > 0.0f) || !(sy > 0.0f)) return false;  // infinite plane (and the haze drawn on it)
    sx *= kRadiusMargin;
    sy *= kRadiusMargin;
    float axis_x[3] = {g.mat[0], g.mat[3], g.mat[6]};  // the plane's local x and y axes
    float axis_y[3] = {g.mat[1], g.mat[4], g.mat[7]};
    float corners[4][3];
    for (int k = 0; k < 4; ++k) {
      float ux = (k & 1) ? sx : -sx, uy = (k & 2) ? sy : -sy;
      for (int i = 0; i < 3; ++i) corners[k][i] = center[i] + ux * axis_x[i] + uy * axis_y[i];
    }
    for (int s = 0; s < nsides; ++s) {
      bool all_outside = true;
      for (int k = 0; k < 4 && all_outside; ++k) {
        all_outside = Dot(sides[s].normal, corners[k]) < sides[s].offset - kDistanceSlack;
      }
      if (all_outside) return true;
    }
    return false;
  }
  float radius;
  if (!BoundingRadius(g, &radius)) return false;  // meshes, lines, arrows, flexes, skins, ...: always kept
  for (int s = 0; s < nsides; ++s) {
    if (Dot(sides[s].normal, center) < sides[s].offset - radius) return true;
  }
  return false;
}

// Occlusion: a geom is hidden when every point of it lies behind an opaque, front-facing plane
// (the *occluder*) and inside the occluder's on-screen rectangle, both by a margin. mjr_render
// draws an occluder in its opaque pass with depth writes, so every sample the hidden geom could
// cover already holds a nearer depth, whatever the drawing order: its fragments all fail the depth
// test (opaque or transparent alike), and the frame is the same without it.
constexpr float kOcclusionPixels = 2.0f;  // screen margin of the containment test, in pixels
constexpr float kOpaqueAlpha = 0.995f;    // mjr_render treats lower alphas as transparent
// Depth separation: the hidden points must lie this far behind the occluder's plane (metres) and
// at least kDepthQuanta steps of a 24-bit depth buffer behind it (reversed Z: depth ~ near / z).
constexpr float kMinDepthGap = 0.05f;
constexpr float kDepthQuanta = 64.0f;

struct View {
  float right[3], up[3], forward[3];
  float near;
  float margin_x, margin_y;  // the containment margin at the near plane
};

// (x, y) at the near plane and depth z of a point relative to the eye.
void Project(const View& v, const float* p, float* x, float* y, float* z) {
  *z = Dot(v.forward, p);
  *x = v.near * Dot(v.right, p) / *z;
  *y = v.near * Dot(v.up, p) / *z;
}

struct Occluder {
  float away[3];                          // the plane's normal, pointing away from the eye
  float distance;                         // away . p for p on the plane (relative to the eye): the eye's distance, > 0
  float edge_a[4], edge_b[4], edge_c[4];  // screen-space edges a*x + b*y >= c, shrunk by the margin
};

// A plane's rectangle corners relative to the eye, with half sizes (sx, sy).
void PlaneCorners(const mjvGeom& g, const float* eye, float sx, float sy, float corners[4][3]) {
  const float axis_x[3] = {g.mat[0], g.mat[3], g.mat[6]};
  const float axis_y[3] = {g.mat[1], g.mat[4], g.mat[7]};
  // In order around the rectangle, for the edge tests.
  const float signs[4][2] = {{-1, -1}, {1, -1}, {1, 1}, {-1, 1}};
  for (int k = 0; k < 4; ++k) {
    for (int i = 0; i < 3; ++i) {
      corners[k][i] = g.pos[i] - eye[i] + signs[k][0] * sx * axis_x[i] + signs[k][1] * sy * axis_y[i];
    }
  }
}

// The sizes mjr_render may draw a plane with (display list of the model size, or the geom size):
// the smaller pair (occluders) or the larger (hidden geoms). False for infinite planes.
bool PlaneSize(const mjModel* m, const mjvGeom& g, bool larger, float* sx, float* sy) {
  *sx = g.size[0];
  *sy = g.size[1];
  if (g.dataid >= 0) {
    if (g.objtype != mjOBJ_GEOM || g.objid < 0 || g.objid >= m->ngeom) return false;
    float mx = static_cast<float>(m->geom_size[3 * g.objid]), my = static_cast<float>(m->geom_size[3 * g.objid + 1]);
    *sx = larger ? std::max(*sx, mx) : std::min(*sx, mx);
    *sy = larger ? std::max(*sy, my) : std::min(*sy, my);
  }
  return *sx > 0.0f && *sy > 0.0f;
}

bool MakeOccluder(const mjModel* m, const mjvGeom& g, const float* eye, const View& v, Occluder* out) {
  if (g.type != mjGEOM_PLANE || g.rgba[3] < kOpaqueAlpha || g.label[0] != '\0') return false;
  float sx, sy;
  if (!PlaneSize(m, g, /*larger=*/false, &sx, &sy)) return false;
  const float normal[3] = {g.mat[2], g.mat[5], g.mat[8]};
  float rel[3] = {g.pos[0] - eye[0], g.pos[1] - eye[1], g.pos[2] - eye[2]};
  float offset = Dot(normal, rel);
  if (!(offset < -kMinDepthGap)) return false;  // not clearly front-facing (mjr_render: isBehind)
  float corners[4][3], px[4], py[4];
  PlaneCorners(g, eye, sx, sy, corners);
  for (int k = 0; k < 4; ++k) {
    float z;
    Project(v, corners[k], &px[k], &py[k], &z);
    if (!(z > 2.0f * v.near)) return false;  // clipped by the near plane: not all of it is drawn
  }
  // Orientation of the projected quad, so that "inside" is the same side of every edge.
  float area = 0;
  for (int k = 0; k < 4; ++k) area += px[k] * py[(k + 1) % 4] - px[(k + 1) % 4] * py[k];
  if (std::fabs(area) < 1e-12f) return false;
  float sign = area > 0 ? 1.0f : -1.0f;
  for (int k = 0; k < 4; ++k) {
    int next = (k + 1) % 4;
    // Inside: sign * cross(edge, point - start) >= 0, i.e. a*x + b*y >= c; shrunk by the margin
    // measured along the edge's normal (|a| margin_x + |b| margin_y bounds it for a pixel box).
    float a = -sign * (py[next] - py[k]), b = sign * (px[next] - px[k]);
    float c = a * px[k] + b * py[k];
    out->edge_a[k] = a;
    out->edge_b[k] = b;
    out->edge_c[k] = c + std::fabs(a) * v.margin_x + std::fabs(b) * v.margin_y;
  }
  for (int i = 0; i < 3; ++i) out->away[i] = -normal[i];
  out->distance = -offset;
  return true;
}

// Points that bound geom `g` (their convex hull contains what mjr_render draws), relative to the eye.
int BoundingPoints(const mjModel* m, const mjvGeom& g, const float* eye, float points[8][3]) {
  if (g.label[0] != '\0') return 0;
  if (g.type == mjGEOM_PLANE) {
    float sx, sy;
    if (!PlaneSize(m, g, /*larger=*/true, &sx, &sy)) return 0;
    float corners[4][3];
    PlaneCorners(g, eye, sx * kRadiusMargin, sy * kRadiusMargin, corners);
    std::memcpy(points, corners, sizeof(corners));
    return 4;
  }
  float radius;
  if (!BoundingRadius(g, &radius)) return 0;
  for (int k = 0; k < 8; ++k) {  // the corners of the world-aligned cube around the bounding sphere
    for (int i = 0; i < 3; ++i) points[k][i] = g.pos[i] - eye[i] + ((k >> i) & 1 ? radius : -radius);
  }
  return 8;
}

bool Occludes(const Occluder& o, const View& v, const float (*points)[3], int npoints) {
  for (int k = 0; k < npoints; ++k) {
    float x, y, z;
    Project(v, points[k], &x, &y, &z);
    if (!(z > v.near)) return false;
    for (int e = 0; e < 4; ++e) {
      if (!(o.edge_a[e] * x + o.edge_b[e] * y >= o.edge_c[e])) return false;
    }
    // Behind the occluder's plane, by enough depth-buffer steps.
    float gap = std::max(kMinDepthGap, kDepthQuanta * z * z / (v.near * 16777216.0f));
    if (!(Dot(o.away, points[k]) > o.distance + gap)) return false;
  }
  return true;
}

// Drops the geoms hidden behind a single occluder; returns the geoms kept.
int CullOccluded(const mjModel* m, mjvScene* scn, const float* eye, const View& v) {
  std::vector<Occluder> occluders;
  for (int i = 0; i < scn->ngeom; ++i) {
    Occluder o;
    if (MakeOccluder(m, scn->geoms[i], eye, v, &o)) occluders.push_back(o);
  }
  if (occluders.empty()) return scn->ngeom;
  int kept = 0;
  for (int i = 0; i < scn->ngeom; ++i) {
    float points[8][3];
    int npoints = BoundingPoints(m, scn->geoms[i], eye, points);
    bool hidden = false;
    for (size_t k = 0; k < occluders.size() && npoints > 0 && !hidden; ++k) {
      hidden = Occludes(occluders[k], v, points, npoints);
    }
    if (hidden) continue;
    if (kept != i) scn->geoms[kept] = scn->geoms[i];
    ++kept;
  }
  return kept;
}

}  // namespace

CullResult CullInvisibleGeoms(const mjModel* m, mjvScene* scn, int width, int height) {
  CullResult none{false, scn->ngeom, 0};
  if (width <= 0 || height <= 0 || scn->stereo != mjSTEREO_NONE || scn->enabletransform ||
      HasShadowsOrReflections(scn)) {
    return none;
  }
  // The mono camera mjr_render uses, and its view basis as mjr_lookAt builds it.
  mjvGLCamera cam = mjv_averageCamera(scn->camera, scn->camera + 1);
  if (cam.orthographic || !(cam.frustum_near > 0.0f) || !(cam.frustum_top > cam.frustum_bottom)) {
    return none;
  }
  float forward[3] = {cam.forward[0], cam.forward[1], cam.forward[2]};
  float up[3] = {cam.up[0], cam.up[1], cam.up[2]};
  float right[3];
  if (!Normalize(forward)) return none;
  Cross(forward, up, right);
  if (!Normalize(right)) return none;
  Cross(right, forward, up);

  // mjr_render's frustum at the near plane: x in [center -+ halfwidth], y in [bottom, top], with
  // halfwidth from the viewport's aspect ratio (or frustum_width when set: take the larger).
  float near = cam.frustum_near;
  float halfwidth =
      0.5f * static_cast<float>(width) / static_cast<float>(height) * (cam.frustum_top - cam.frustum_bottom);
  halfwidth = std::max(halfwidth, std::fabs(cam.frustum_width));
  float x_margin = kFrustumMargin * 2.0f * halfwidth;
  float y_margin = kFrustumMargin * (cam.frustum_top - cam.frustum_bottom);
  float left = cam.frustum_center - halfwidth - x_margin, right_edge = cam.frustum_center + halfwidth + x_margin;
  float bottom = cam.frustum_bottom - y_margin, top = cam.frustum_top + y_margin;
  // In camera space (x right, y up, z forward) a visible point has z >= near and
  // left <= near*x/z <= right, bottom <= near*y/z <= top; the near plane is moved halfway to the eye.
  HalfSpace sides[5];
  bool ok = MakeHalfSpace(right, up, forward, near, 0, -left, 0, &sides[0]) &&
            MakeHalfSpace(right, up, forward, -near, 0, right_edge, 0, &sides[1]) &&
            MakeHalfSpace(right, up, forward, 0, near, -bottom, 0, &sides[2]) &&
            MakeHalfSpace(right, up, forward, 0, -near, top, 0, &sides[3]) &&
            MakeHalfSpace(right, up, forward, 0, 0, 1, 0.5f * near, &sides[4]);
  if (!ok) return none;

  int kept = 0;
  for (int i = 0; i < scn->ngeom; ++i) {
    if (OutsideFrustum(m, scn->geoms[i], cam.pos, sides, 5)) continue;
    if (kept != i) scn->geoms[kept] = scn->geoms[i];
    ++kept;
  }
  int total = scn->ngeom;
  scn->ngeom = kept;
  // Occlusion needs opaque occluders drawn filled and every geom drawn (segmentation skips some),
  // and one frustum width: mjr_render's, from the viewport unless frustum_width is set.
  if (!scn->flags[mjRND_WIREFRAME] && !scn->flags[mjRND_SEGMENT] && cam.frustum_width == 0.0f) {
    View view;
    std::copy(right, right + 3, view.right);
    std::copy(up, up + 3, view.up);
    std::copy(forward, forward + 3, view.forward);
    view.near = near;
    view.margin_x = kOcclusionPixels * 2.0f * halfwidth / static_cast<float>(width);
    view.margin_y = kOcclusionPixels * (cam.frustum_top - cam.frustum_bottom) / static_cast<float>(height);
    scn->ngeom = CullOccluded(m, scn, cam.pos, view);
  }
  return {true, scn->ngeom, total - scn->ngeom};
}

EpisodeRenderer::EpisodeRenderer() = default;
EpisodeRenderer::~EpisodeRenderer() = default;

void EpisodeRenderer::FreeEpisodeContext() {
  if (episode_ == nullptr) return;
  // Put its own (placeholder) names back, so freeing it leaves the master's textures alone.
  std::copy(placeholder_names_.begin(), placeholder_names_.end(), episode_->texture);
  mjr_freeContext(episode_.get());
  episode_.reset();
  placeholder_names_.clear();
}

void EpisodeRenderer::NewEpisode(const mjModel* m, int max_geom, bool placeholder_textures) {
  FreeEpisodeContext();
  if (placeholder_textures) {
    if (master_ == nullptr) throw std::logic_error("a placeholder-texture model needs a master context");
    auto context = std::make_unique<mjrContext>();
    mjr_defaultContext(context.get());
    mjr_makeContext(m, context.get(), kFontScale);
    int count = context->ntexture;
    if (count != master_->ntexture ||
        !std::equal(context->textureType, context->textureType + count, master_->textureType)) {
      mjr_freeContext(context.get());
      throw std::runtime_error("placeholder model has " + std::to_string(count) + " textures, the master context " +
                               std::to_string(master_->ntexture) + ": the texture sets differ");
    }
    placeholder_names_.assign(context->texture, context->texture + count);
    std::copy(master_->texture, master_->texture + count, context->texture);
    episode_ = std::move(context);
  } else {
    if (master_ != nullptr) mjr_freeContext(master_.get());
    master_ = std::make_unique<mjrContext>();
    mjr_defaultContext(master_.get());
    mjr_makeContext(m, master_.get(), kFontScale);
  }
  // mjr_makeContext leaves the window framebuffer bound; dm_control's Camera binds the offscreen
  // one once, as we do here.
  mjr_setBuffer(mjFB_OFFSCREEN, episode_ ? episode_.get() : master_.get());
  if (scene_ != nullptr) mjv_freeScene(scene_.get());
  scene_ = std::make_unique<mjvScene>();
  mjv_defaultScene(scene_.get());
  mjv_makeScene(m, scene_.get(), max_geom);
}

CullResult EpisodeRenderer::Render(const mjModel* m, mjData* d, int camera_id, int width, int height, bool cull,
                                   std::uint8_t* rgb) {
  if (scene_ == nullptr) throw std::logic_error("EpisodeRenderer::Render before NewEpisode");
  if (camera_id < 0 || camera_id >= m->ncam) {
    throw std::invalid_argument("camera id " + std::to_string(camera_id) + " outside the model's " +
                                std::to_string(m->ncam) + " cameras");
  }
  mjrContext* con = episode_ ? episode_.get() : master_.get();
  if (width <= 0 || height <= 0 || width > con->offWidth || height > con->offHeight) {
    throw std::invalid_argument("frame " + std::to_string(width) + "x" + std::to_string(height) +
                                " does not fit the offscreen buffer");
  }
  // dm_control's Camera: default option without the rangefinder, no perturbation, a fixed camera.
  mjvOption option;
  mjv_defaultOption(&option);
  option.flags[mjVIS_RANGEFINDER] = 0;
  mjvPerturb perturb;
  mjv_defaultPerturb(&perturb);
  perturb.active = 0;
  perturb.select = 0;
  mjvCamera camera;
  mjv_defaultCamera(&camera);
  camera.type = mjCAMERA_FIXED;
  camera.fixedcamid = camera_id;
  mjv_updateScene(m, d, &option, &perturb, &camera, mjCAT_ALL, scene_.get());
  CullResult result{false, scene_->ngeom, 0};
  if (cull) result = CullInvisibleGeoms(m, scene_.get(), width, height);
  mjrRect rect{0, 0, width, height};
  mjr_render(rect, scene_.get(), con);
  const std::size_t row = 3 * static_cast<std::size_t>(width);
  bottom_up_.resize(row * height);
  mjr_readPixels(bottom_up_.data(), nullptr, rect, con);
  for (int y = 0; y < height; ++y) {
    std::memcpy(rgb + row * y, bottom_up_.data() + row * (height - 1 - y), row);
  }
  return result;
}

void EpisodeRenderer::Close() {
  FreeEpisodeContext();
  if (master_ != nullptr) {
    mjr_freeContext(master_.get());
    master_.reset();
  }
  if (scene_ != nullptr) {
    mjv_freeScene(scene_.get());
    scene_.reset();
  }
}

}  // namespace envs_native
