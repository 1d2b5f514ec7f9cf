// nest::Nest<T>: a value that is a leaf T, a vector of nests, or a string-keyed map of nests.
//
// Rollouts, observations and agent states are trees of arrays; the C++ core moves them without
// caring about their shape, so every operation here is structural: map over the leaves, walk
// several trees of equal structure together, flatten to a list and pack a list back into a shape.
// Map keys are kept sorted (std::map), so flatten() visits dict values in sorted-key order, the
// same order as the Python binding and dm-tree.
//
// Structure mismatches throw nest::NestError, whose message names the path where the trees
// differ and what each had there, e.g.
//   "nests differ at ['obs'][1]: nest 0 has a map with keys [a, b], nest 1 has a leaf".
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace nest {

// Thrown for structure mismatches and misuse (front() of an empty nest, wrong leaf count).
class NestError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

template <typename T>
class Nest {
 public:
  using Leaf = T;
  using Vector = std::vector<Nest<T>>;
  using Map = std::map<std::string, Nest<T>>;
  using Value = std::variant<T, Vector, Map>;

  Nest(const T& leaf) : value_(leaf) {}        // NOLINT(runtime/explicit)
  Nest(T&& leaf) : value_(std::move(leaf)) {}  // NOLINT(runtime/explicit)
  Nest(Vector v) : value_(std::move(v)) {}     // NOLINT(runtime/explicit)
  Nest(Map m) : value_(std::move(m)) {}        // NOLINT(runtime/explicit)

  bool is_leaf() const { return value_.index() == 0; }
  bool is_vector() const { return value_.index() == 1; }
  bool is_map() const { return value_.index() == 2; }

  const T& leaf() const { return Get<T>("a leaf"); }
  T& leaf() { return Get<T>("a leaf"); }
  const Vector& vector() const { return Get<Vector>("a vector"); }
  Vector& vector() { return Get<Vector>("a vector"); }
  const Map& map() const { return Get<Map>("a map"); }
  Map& map() { return Get<Map>("a map"); }
  const Value& value() const { return value_; }

  // True when the nest holds no leaf at all (e.g. an empty vector, or a map of empty vectors).
  bool empty() const {
    bool found = false;
    VisitUntil(*this, [&found](const T&) { found = true; });
    return !found;
  }

  // The first leaf in flatten() order.
  const T& front() const {
    const T* first = nullptr;
    VisitUntil(*this, [&first](const T& leaf) { first = &leaf; });
    if (first == nullptr) throw NestError("front() of a nest without leaves");
    return *first;
  }

  // Number of leaves.
  std::size_t size() const {
    std::size_t n = 0;
    for_each([&n](const T&) { ++n; });
    return n;
  }

  // A nest of the same structure whose leaves are f(leaf).
  template <typename F>
  Nest<std::invoke_result_t<F&, const T&>> map(F&& f) const {
    using U = std::invoke_result_t<F&, const T&>;
    return std::visit(
        [&f](const auto& v) -> Nest<U> {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, T>) {
            return Nest<U>(std::invoke(f, v));
          } else if constexpr (std::is_same_v<V, Vector>) {
            typename Nest<U>::Vector out;
            out.reserve(v.size());
            for (const Nest& n : v) out.push_back(n.map(f));
            return Nest<U>(std::move(out));
          } else {
            typename Nest<U>::Map out;
            for (const auto& [key, n] : v) out.emplace(key, n.map(f));
            return Nest<U>(std::move(out));
          }
        },
        value_);
  }

  // Calls f on every leaf, in flatten() order.
  template <typename F>
  void for_each(F&& f) const {
    std::visit(
        [&f](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, T>) {
            std::invoke(f, v);
          } else if constexpr (std::is_same_v<V, Vector>) {
            for (const Nest& n : v) n.for_each(f);
          } else {
            for (const auto& kv : v) kv.second.for_each(f);
          }
        },
        value_);
  }

  template <typename F>
  void for_each(F&& f) {
    std::visit(
        [&f](auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, T>) {
            std::invoke(f, v);
          } else if constexpr (std::is_same_v<V, Vector>) {
            for (Nest& n : v) n.for_each(f);
          } else {
            for (auto& kv : v) kv.second.for_each(f);
          }
        },
        value_);
  }

  // The leaves in order: depth first, vectors by index, maps by sorted key.
  std::vector<T> flatten() const& {
    std::vector<T> out;
    for_each([&out](const T& leaf) { out.push_back(leaf); });
    return out;
  }

  // Moves the leaves out; works for move-only leaves.
  std::vector<T> flatten() && {
    std::vector<T> out;
    for_each([&out](T& leaf) { out.push_back(std::move(leaf)); });
    return out;
  }

  // A nest with this nest's structure and the given leaves, in flatten() order. The leaves are
  // moved out of `flat`, so move-only leaves work with pack_as(std::move(flat)).
  template <typename U>
  Nest<U> pack_as(std::vector<U> flat) const {
    const std::size_t leaves = size();
    if (leaves != flat.size()) {
      throw NestError("pack_as: the structure has " + std::to_string(leaves) + " leaves, but " +
                      std::to_string(flat.size()) + " values were given");
    }
    std::size_t index = 0;
    return PackAs(flat, index);
  }

  friend bool operator==(const Nest& a, const Nest& b) { return a.value_ == b.value_; }
  friend bool operator!=(const Nest& a, const Nest& b) { return !(a == b); }

 private:
  template <typename U>
  friend class Nest;

  template <typename V>
  const V& Get(const char* what) const {
    if (const V* v = std::get_if<V>(&value_)) return *v;
    throw NestError(std::string("expected ") + what + ", got " + KindName());
  }
  template <typename V>
  V& Get(const char* what) {
    if (V* v = std::get_if<V>(&value_)) return *v;
    throw NestError(std::string("expected ") + what + ", got " + KindName());
  }

 public:
  // "a leaf", "a vector of 3" or "a map with keys [a, b]": for error messages.
  std::string KindName() const {
    if (is_leaf()) return "a leaf";
    if (is_vector()) return "a vector of " + std::to_string(vector().size());
    std::string keys;
    for (const auto& kv : map()) keys += (keys.empty() ? "" : ", ") + kv.first;
    return "a map with keys [" + keys + "]";
  }

 private:
  // Calls f on leaves in order until it has been called once (stops early).
  template <typename F>
  static bool VisitUntil(const Nest& n, F&& f) {
    if (const T* leaf = std::get_if<T>(&n.value_)) {
      f(*leaf);
      return true;
    }
    if (const Vector* v = std::get_if<Vector>(&n.value_)) {
      for (const Nest& child : *v)
        if (VisitUntil(child, f)) return true;
      return false;
    }
    for (const auto& kv : std::get<Map>(n.value_))
      if (VisitUntil(kv.second, f)) return true;
    return false;
  }

  template <typename U>
  Nest<U> PackAs(std::vector<U>& flat, std::size_t& index) const {
    return std::visit(
        [&](const auto& v) -> Nest<U> {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, T>) {
            return Nest<U>(std::move(flat[index++]));
          } else if constexpr (std::is_same_v<V, Vector>) {
            typename Nest<U>::Vector out;
            out.reserve(v.size());
            for (const Nest& n : v) out.push_back(n.PackAs(flat, index));
            return Nest<U>(std::move(out));
          } else {
            typename Nest<U>::Map out;
            for (const auto& [key, n] : v) out.emplace(key, n.PackAs(flat, index));
            return Nest<U>(std::move(out));
          }
        },
        value_);
  }

  Value value_;
};

namespace detail {

// One step of the path from the root to the node being visited, kept on the call stack and only
// formatted when an error is thrown: ['obs'] for a map child, [3] for a vector child.
struct PathStep {
  const PathStep* parent;  // nullptr at the first step below the root
  const std::string* key;  // the map key, or nullptr for a vector index
  std::size_t index;
};

// "at the root" or "at ['obs'][1]".
inline std::string Where(const PathStep* step) {
  if (step == nullptr) return "at the root";
  std::vector<const PathStep*> steps;
  for (; step != nullptr; step = step->parent) steps.push_back(step);
  std::string out = "at ";
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const PathStep& s = **it;
    out += s.key != nullptr ? "['" + *s.key + "']" : "[" + std::to_string(s.index) + "]";
  }
  return out;
}

// Throws NestError unless `other` (nest number k) has the same kind, length and keys as `first`
// at this node. Only this node is compared; the callers recurse.
template <typename A, typename B>
void CheckSameNode(const Nest<A>& first, const Nest<B>& other, std::size_t k, const PathStep* path) {
  bool same = first.value().index() == other.value().index();
  if (same && first.is_vector()) same = first.vector().size() == other.vector().size();
  if (same && first.is_map()) {
    const auto& a = first.map();
    const auto& b = other.map();
    same = a.size() == b.size();
    for (auto ia = a.begin(), ib = b.begin(); same && ia != a.end(); ++ia, ++ib) same = ia->first == ib->first;
  }
  if (!same) {
    throw NestError("nests differ " + Where(path) + ": nest 0 has " + first.KindName() + ", nest " + std::to_string(k) +
                    " has " + other.KindName());
  }
}

// Throws NestError unless `other` (nest number k) has the structure of `first` everywhere.
template <typename A, typename B>
void CheckSameStructure(const Nest<A>& first, const Nest<B>& other, std::size_t k, const PathStep* path) {
  CheckSameNode(first, other, k, path);
  if (first.is_vector()) {
    for (std::size_t i = 0; i < first.vector().size(); ++i) {
      const PathStep step{path, nullptr, i};
      CheckSameStructure(first.vector()[i], other.vector()[i], k, &step);
    }
  } else if (first.is_map()) {
    auto it = other.map().begin();
    for (const auto& kv : first.map()) {
      const PathStep step{path, &kv.first, 0};
      CheckSameStructure(kv.second, (it++)->second, k, &step);
    }
  }
}

// Maps over nests whose structures have been checked: pairs up the nodes, calls f on the leaves.
template <typename T, typename F>
auto ZipMap(const std::vector<const Nest<T>*>& nests, F& f)
    -> Nest<std::invoke_result_t<F&, const std::vector<const T*>&>> {
  using U = std::invoke_result_t<F&, const std::vector<const T*>&>;
  const Nest<T>& first = *nests[0];
  if (first.is_leaf()) {
    std::vector<const T*> leaves;
    leaves.reserve(nests.size());
    for (const Nest<T>* n : nests) leaves.push_back(&n->leaf());
    return Nest<U>(std::invoke(f, leaves));
  }
  std::vector<const Nest<T>*> children(nests.size());
  if (first.is_vector()) {
    typename Nest<U>::Vector out;
    out.reserve(first.vector().size());
    for (std::size_t i = 0; i < first.vector().size(); ++i) {
      for (std::size_t k = 0; k < nests.size(); ++k) children[k] = &nests[k]->vector()[i];
      out.push_back(ZipMap(children, f));
    }
    return Nest<U>(std::move(out));
  }
  typename Nest<U>::Map out;
  std::vector<typename Nest<T>::Map::const_iterator> its;
  its.reserve(nests.size());
  for (const Nest<T>* n : nests) its.push_back(n->map().begin());
  for (const auto& kv : first.map()) {
    for (std::size_t k = 0; k < nests.size(); ++k) children[k] = &(its[k]++)->second;
    out.emplace_hint(out.end(), kv.first, ZipMap(children, f));
  }
  return Nest<U>(std::move(out));
}

// Map over two nests whose structures have been checked.
template <typename A, typename B, typename F>
auto Map2(const Nest<A>& a, const Nest<B>& b, F& f) -> Nest<std::invoke_result_t<F&, const A&, const B&>> {
  using U = std::invoke_result_t<F&, const A&, const B&>;
  if (a.is_leaf()) return Nest<U>(std::invoke(f, a.leaf(), b.leaf()));
  if (a.is_vector()) {
    typename Nest<U>::Vector out;
    out.reserve(a.vector().size());
    for (std::size_t i = 0; i < a.vector().size(); ++i) out.push_back(Map2(a.vector()[i], b.vector()[i], f));
    return Nest<U>(std::move(out));
  }
  typename Nest<U>::Map out;
  auto ib = b.map().begin();
  for (const auto& kv : a.map()) out.emplace_hint(out.end(), kv.first, Map2(kv.second, (ib++)->second, f));
  return Nest<U>(std::move(out));
}

}  // namespace detail

// Maps f over the leaves of several nests of equal structure: f receives the leaves at one
// position as a vector of pointers, in the order of `nests`. Throws NestError on a mismatch,
// before f is called.
template <typename T, typename F>
auto map_many(F&& f, const std::vector<Nest<T>>& nests)
    -> Nest<std::invoke_result_t<F&, const std::vector<const T*>&>> {
  if (nests.empty()) throw NestError("map_many needs at least one nest");
  std::vector<const Nest<T>*> ptrs;
  ptrs.reserve(nests.size());
  for (const Nest<T>& n : nests) ptrs.push_back(&n);
  for (std::size_t k = 1; k < nests.size(); ++k) detail::CheckSameStructure(nests[0], nests[k], k, /*path=*/nullptr);
  return detail::ZipMap(ptrs, f);
}

// Maps f(a_leaf, b_leaf) over two nests of equal structure (the leaf types may differ).
// Throws NestError on a mismatch, before f is called.
template <typename F, typename A, typename B>
auto map2(F&& f, const Nest<A>& a, const Nest<B>& b) -> Nest<std::invoke_result_t<F&, const A&, const B&>> {
  detail::CheckSameStructure(a, b, /*k=*/1, /*path=*/nullptr);
  return detail::Map2(a, b, f);
}

// Turns a vector of nests of equal structure into one nest whose leaves are vectors (copies).
template <typename T>
Nest<std::vector<T>> zip(const std::vector<Nest<T>>& nests) {
  return map_many(
      [](const std::vector<const T*>& leaves) {
        std::vector<T> out;
        out.reserve(leaves.size());
        for (const T* leaf : leaves) out.push_back(*leaf);
        return out;
      },
      nests);
}

}  // namespace nest
