// The Python module `nest`: map, flatten and rebuild nests of tuples, lists and dicts.
//
// The functions walk the Python objects directly with the CPython API (no conversion to a C++
// nest::Nest and back), so one call costs about as much as visiting each node once. They keep
// the GIL: everything they touch is a Python object, and f is Python code.
//
// Conventions, shared with nest::Nest<T> in nest/nest.h and with dm-tree:
//  - Containers are exactly tuple, list and dict, plus namedtuples (tuple subclasses with
//    `_fields`). Everything else, subclasses of list and dict included, is a leaf.
//  - Dict keys must be strings; dict values are visited in sorted-key order. Results keep each
//    container's type, and dicts keep their key order.
//  - f is called on the leaves in flatten() order. Errors from f propagate unchanged.
//  - Structure errors raise ValueError naming the path, e.g. "at ['obs'][1]".
//
// The walkers hold a reference to every node they visit and check sizes as they go, so an f that
// mutates the nest it is mapped over gets a RuntimeError, not a crash.
#include <pybind11/pybind11.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace nest_py {
namespace {

enum class Kind { kLeaf, kTuple, kList, kDict, kNamedTuple };

bool IsNamedTupleType(PyTypeObject* type) {
  return PyObject_HasAttrString(reinterpret_cast<PyObject*>(type), "_fields") == 1;
}

Kind KindOf(PyObject* o) {
  PyTypeObject* type = Py_TYPE(o);
  if (type == &PyTuple_Type) return Kind::kTuple;
  if (type == &PyList_Type) return Kind::kList;
  if (type == &PyDict_Type) return Kind::kDict;
  if (PyTuple_Check(o) && IsNamedTupleType(type)) return Kind::kNamedTuple;
  return Kind::kLeaf;
}

std::string Repr(PyObject* o) {
  PyObject* repr = PyObject_Repr(o);
  if (repr == nullptr) {
    PyErr_Clear();
    return "<unprintable>";
  }
  const char* text = PyUnicode_AsUTF8(repr);
  std::string out = text != nullptr ? text : "<unprintable>";
  if (text == nullptr) PyErr_Clear();
  Py_DECREF(repr);
  return out;
}

// "a leaf of type int", "a list of 2", "a namedtuple Point of 2", "a dict with keys ['a', 'b']".
std::string Describe(PyObject* o) {
  switch (KindOf(o)) {
    case Kind::kLeaf:
      return std::string("a leaf of type ") + Py_TYPE(o)->tp_name;
    case Kind::kTuple:
      return "a tuple of " + std::to_string(PyTuple_GET_SIZE(o));
    case Kind::kList:
      return "a list of " + std::to_string(PyList_GET_SIZE(o));
    case Kind::kNamedTuple:
      return std::string("a namedtuple ") + Py_TYPE(o)->tp_name + " of " + std::to_string(PyTuple_GET_SIZE(o));
    case Kind::kDict: {
      PyObject* keys = PyDict_Keys(o);
      if (keys == nullptr) {
        PyErr_Clear();
        return "a dict";
      }
      if (PyList_Sort(keys) < 0) PyErr_Clear();  // Unsortable keys are shown as they come.
      std::string out = "a dict with keys " + Repr(keys);
      Py_DECREF(keys);
      return out;
    }
  }
  return "?";
}

// One step of the path from the root to the node being visited, kept on the C++ stack and only
// formatted for an error message: ['obs'] for a dict value, [3] for a list or tuple item.
struct PathStep {
  const PathStep* parent;  // nullptr directly below the root
  PyObject* key;           // the dict key, or nullptr for an index
  Py_ssize_t index;
};

// "at the root" or "at ['obs'][1]".
std::string Where(const PathStep* step) {
  if (step == nullptr) return "at the root";
  std::vector<const PathStep*> steps;
  for (; step != nullptr; step = step->parent) steps.push_back(step);
  std::string out = "at ";
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const PathStep& s = **it;
    out += "[" + (s.key != nullptr ? Repr(s.key) : std::to_string(s.index)) + "]";
  }
  return out;
}

[[noreturn]] void ThrowValueError(const char* func, const std::string& message) {
  throw py::value_error(std::string(func) + ": " + message);
}

[[noreturn]] void ThrowChanged(const char* func, const char* what, const PathStep* path) {
  throw std::runtime_error(std::string(func) + ": " + what + " changed size during the call, " + Where(path));
}

// Turns a new reference (or nullptr with a Python error set) into a py::object.
py::object Steal(PyObject* o) {
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

// Bounds the nesting depth like Python's own recursion limit (a list that contains itself
// raises RecursionError instead of overflowing the C stack).
class RecursionGuard {
 public:
  RecursionGuard() {
    if (Py_EnterRecursiveCall(" in a nest (too deep, or a container contains itself)") != 0)
      throw py::error_already_set();
  }
  ~RecursionGuard() { Py_LeaveRecursiveCall(); }
  RecursionGuard(const RecursionGuard&) = delete;
  RecursionGuard& operator=(const RecursionGuard&) = delete;
};

// The children of one container node, in flatten() order: items of a tuple or list, values of
// a dict by sorted key. Holds the sorted keys; Get() returns a new reference.
class Children {
 public:
  Children(PyObject* node, Kind kind, const char* func, const PathStep* path)
      : node_(node), kind_(kind), func_(func), path_(path) {
    if (kind == Kind::kList) {
      size_ = PyList_GET_SIZE(node);
    } else if (kind == Kind::kDict) {
      keys_ = Steal(PyDict_Keys(node));
      size_ = PyList_GET_SIZE(keys_.ptr());
      for (Py_ssize_t i = 0; i < size_; ++i) {
        PyObject* key = PyList_GET_ITEM(keys_.ptr(), i);
        if (!PyUnicode_Check(key)) {
          ThrowValueError(
              func, "dict keys must be strings, got " + Repr(key) + " (" + Py_TYPE(key)->tp_name + ") " + Where(path));
        }
      }
      if (size_ > 1 && PyList_Sort(keys_.ptr()) < 0) throw py::error_already_set();
    } else {
      size_ = PyTuple_GET_SIZE(node);
    }
  }

  Py_ssize_t size() const { return size_; }
  PyObject* key(Py_ssize_t i) const { return kind_ == Kind::kDict ? PyList_GET_ITEM(keys_.ptr(), i) : nullptr; }
  PathStep Step(Py_ssize_t i) const { return PathStep{path_, key(i), i}; }

  py::object Get(Py_ssize_t i) const {
    if (kind_ == Kind::kList) {
      if (i >= PyList_GET_SIZE(node_)) ThrowChanged(func_, "a list", path_);
      return py::reinterpret_borrow<py::object>(PyList_GET_ITEM(node_, i));
    }
    if (kind_ == Kind::kDict) {
      PyObject* value = PyDict_GetItemWithError(node_, key(i));
      if (value == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        ThrowChanged(func_, "a dict", path_);
      }
      return py::reinterpret_borrow<py::object>(value);
    }
    return py::reinterpret_borrow<py::object>(PyTuple_GET_ITEM(node_, i));
  }

  // Call after the last Get(): a list or dict that grew during the walk is an error too.
  void CheckUnchanged() const {
    if (kind_ == Kind::kList && PyList_GET_SIZE(node_) != size_) ThrowChanged(func_, "a list", path_);
    if (kind_ == Kind::kDict && PyDict_GET_SIZE(node_) != size_) ThrowChanged(func_, "a dict", path_);
  }

 private:
  PyObject* node_;
  Kind kind_;
  const char* func_;
  const PathStep* path_;
  py::object keys_;  // sorted, for a dict
  Py_ssize_t size_ = 0;
};

// An empty container of node's type to fill with SetChild(): a new tuple or list of `size`
// slots, or a copy of the dict (so the result keeps its key order; every value is replaced).
py::object NewContainer(PyObject* node, Kind kind, Py_ssize_t size) {
  switch (kind) {
    case Kind::kList:
      return Steal(PyList_New(size));
    case Kind::kDict:
      return Steal(PyDict_Copy(node));
    default:
      return Steal(PyTuple_New(size));
  }
}

void SetChild(const py::object& out, Kind kind, Py_ssize_t i, PyObject* key, py::object value) {
  switch (kind) {
    case Kind::kList:
      PyList_SET_ITEM(out.ptr(), i, value.release().ptr());
      return;
    case Kind::kDict:
      if (PyDict_SetItem(out.ptr(), key, value.ptr()) < 0) throw py::error_already_set();
      return;
    default:
      PyTuple_SET_ITEM(out.ptr(), i, value.release().ptr());
      return;
  }
}

py::object Finish(PyObject* node, Kind kind, py::object out) {
  if (kind == Kind::kNamedTuple)  // Point(*values)
    return Steal(PyObject_Call(reinterpret_cast<PyObject*>(Py_TYPE(node)), out.ptr(), nullptr));
  return out;
}

// A nest with node's structure and leaf_fn(leaf) (a py::object) at each leaf, in flatten() order.
template <typename LeafFn>
py::object Rebuild(PyObject* node, const PathStep* path, const char* func, LeafFn& leaf_fn) {
  const Kind kind = KindOf(node);
  if (kind == Kind::kLeaf) return leaf_fn(node);
  RecursionGuard guard;
  const Children children(node, kind, func, path);
  py::object out = NewContainer(node, kind, children.size());
  for (Py_ssize_t i = 0; i < children.size(); ++i) {
    const py::object child = children.Get(i);
    const PathStep step = children.Step(i);
    SetChild(out, kind, i, children.key(i), Rebuild(child.ptr(), &step, func, leaf_fn));
  }
  children.CheckUnchanged();
  return Finish(node, kind, std::move(out));
}

// Calls leaf_fn(leaf) on the leaves in flatten() order until it returns true; returns whether
// it did.
template <typename LeafFn>
bool Visit(PyObject* node, const PathStep* path, const char* func, LeafFn& leaf_fn) {
  const Kind kind = KindOf(node);
  if (kind == Kind::kLeaf) return leaf_fn(node);
  RecursionGuard guard;
  const Children children(node, kind, func, path);
  for (Py_ssize_t i = 0; i < children.size(); ++i) {
    const py::object child = children.Get(i);
    const PathStep step = children.Step(i);
    if (Visit(child.ptr(), &step, func, leaf_fn)) return true;
  }
  children.CheckUnchanged();
  return false;
}

Py_ssize_t CountLeaves(PyObject* node, const char* func) {
  Py_ssize_t count = 0;
  auto count_leaf = [&count](PyObject*) {
    ++count;
    return false;
  };
  Visit(node, nullptr, func, count_leaf);
  return count;
}

// Whether `other` matches `first` (of kind `kind`) at this node: both leaves (of any types), or
// containers of the same type and length. Dict keys are compared as the children are looked up.
bool SameNode(PyObject* first, Kind kind, PyObject* other) {
  if (kind == Kind::kLeaf) return KindOf(other) == Kind::kLeaf;
  if (Py_TYPE(other) != Py_TYPE(first)) return false;
  switch (kind) {
    case Kind::kList:
      return PyList_GET_SIZE(other) == PyList_GET_SIZE(first);
    case Kind::kDict:
      return PyDict_GET_SIZE(other) == PyDict_GET_SIZE(first);
    default:
      return PyTuple_GET_SIZE(other) == PyTuple_GET_SIZE(first);
  }
}

// map_many and map_many2: walks nodes[0..k) together, checking at each node that they have
// the same structure, and calls leaf_fn(leaves, k) where all k are leaves.
template <typename LeafFn>
py::object RebuildMany(PyObject* const* nodes, std::size_t k, const PathStep* path, const char* func, LeafFn& leaf_fn) {
  PyObject* first = nodes[0];
  const Kind kind = KindOf(first);
  for (std::size_t j = 1; j < k; ++j) {
    if (!SameNode(first, kind, nodes[j])) {
      ThrowValueError(func, "nests differ " + Where(path) + ": nest 0 has " + Describe(first) + ", nest " +
                                std::to_string(j) + " has " + Describe(nodes[j]));
    }
  }
  if (kind == Kind::kLeaf) return leaf_fn(nodes, k);
  RecursionGuard guard;
  const Children children(first, kind, func, path);
  py::object out = NewContainer(first, kind, children.size());
  std::vector<py::object> others(k);  // children of nodes[1..k), held while we recurse
  std::vector<PyObject*> row(k);
  for (Py_ssize_t i = 0; i < children.size(); ++i) {
    const PathStep step = children.Step(i);
    others[0] = children.Get(i);
    for (std::size_t j = 1; j < k; ++j) {
      if (kind == Kind::kDict) {
        PyObject* value = PyDict_GetItemWithError(nodes[j], children.key(i));
        if (value == nullptr) {
          if (PyErr_Occurred()) throw py::error_already_set();
          ThrowValueError(func, "nests differ " + Where(path) + ": nest 0 has " + Describe(first) + ", nest " +
                                    std::to_string(j) + " has " + Describe(nodes[j]));
        }
        others[j] = py::reinterpret_borrow<py::object>(value);
      } else if (kind == Kind::kList) {
        if (i >= PyList_GET_SIZE(nodes[j])) ThrowChanged(func, "a list", path);
        others[j] = py::reinterpret_borrow<py::object>(PyList_GET_ITEM(nodes[j], i));
      } else {
        others[j] = py::reinterpret_borrow<py::object>(PyTuple_GET_ITEM(nodes[j], i));
      }
    }
    for (std::size_t j = 0; j < k; ++j) row[j] = others[j].ptr();
    SetChild(out, kind, i, children.key(i), RebuildMany(row.data(), k, &step, func, leaf_fn));
  }
  children.CheckUnchanged();
  for (std::size_t j = 1; j < k; ++j) {
    if (kind == Kind::kList && PyList_GET_SIZE(nodes[j]) != children.size()) ThrowChanged(func, "a list", path);
    if (kind == Kind::kDict && PyDict_GET_SIZE(nodes[j]) != children.size()) ThrowChanged(func, "a dict", path);
  }
  return Finish(first, kind, std::move(out));
}

py::object Map(py::handle f, py::handle nest) {
  auto call = [f](PyObject* leaf) { return Steal(PyObject_CallOneArg(f.ptr(), leaf)); };
  return Rebuild(nest.ptr(), nullptr, "nest.map", call);
}

py::object MapMany(py::handle f, const py::args& nests) {
  const std::size_t k = nests.size();
  if (k == 0) throw py::type_error("nest.map_many: needs at least one nest");
  auto call = [f](PyObject* const* leaves, std::size_t n) {
    py::object args = Steal(PyTuple_New(static_cast<Py_ssize_t>(n)));
    for (std::size_t j = 0; j < n; ++j) {
      Py_INCREF(leaves[j]);
      PyTuple_SET_ITEM(args.ptr(), static_cast<Py_ssize_t>(j), leaves[j]);
    }
    return Steal(PyObject_CallOneArg(f.ptr(), args.ptr()));
  };
  return RebuildMany(PySequence_Fast_ITEMS(nests.ptr()), k, nullptr, "nest.map_many", call);
}

py::object MapMany2(py::handle f, py::handle nest1, py::handle nest2) {
  auto call = [f](PyObject* const* leaves, std::size_t n) {
    return Steal(PyObject_Vectorcall(f.ptr(), leaves, n, nullptr));
  };
  PyObject* nodes[2] = {nest1.ptr(), nest2.ptr()};
  return RebuildMany(nodes, 2, nullptr, "nest.map_many2", call);
}

py::list Flatten(py::handle nest) {
  py::list out;
  auto append = [&out](PyObject* leaf) {
    if (PyList_Append(out.ptr(), leaf) < 0) throw py::error_already_set();
    return false;
  };
  Visit(nest.ptr(), nullptr, "nest.flatten", append);
  return out;
}

py::object PackAs(py::handle nest, py::handle flat) {
  const char* func = "nest.pack_as";
  const py::object seq = Steal(PySequence_Fast(flat.ptr(), "nest.pack_as: flat must be a sequence"));
  Py_ssize_t index = 0;
  auto wrong_count = [&]() {
    const Py_ssize_t given = PySequence_Fast_GET_SIZE(seq.ptr());
    ThrowValueError(func, "the structure has " + std::to_string(CountLeaves(nest.ptr(), func)) + " leaves, but " +
                              std::to_string(given) + " values were given");
  };
  auto next = [&](PyObject*) {
    if (index >= PySequence_Fast_GET_SIZE(seq.ptr())) wrong_count();
    return py::reinterpret_borrow<py::object>(PySequence_Fast_GET_ITEM(seq.ptr(), index++));
  };
  py::object out = Rebuild(nest.ptr(), nullptr, func, next);
  if (index != PySequence_Fast_GET_SIZE(seq.ptr())) wrong_count();
  return out;
}

py::object Front(py::handle nest) {
  py::object first;
  auto take = [&first](PyObject* leaf) {
    first = py::reinterpret_borrow<py::object>(leaf);
    return true;
  };
  if (!Visit(nest.ptr(), nullptr, "nest.front", take)) throw py::value_error("nest.front: the nest has no leaves");
  return first;
}

void ForEach(py::handle f, py::handle nest) {
  auto call = [f](PyObject* leaf) {
    Steal(PyObject_CallOneArg(f.ptr(), leaf));
    return false;
  };
  Visit(nest.ptr(), nullptr, "nest.for_each", call);
}

}  // namespace
}  // namespace nest_py

PYBIND11_MODULE(nest, m) {
  using namespace nest_py;  // NOLINT(build/namespaces)
  m.doc() = R"doc(Nested structures: map, flatten and rebuild nests of tuples, lists and dicts.

A nest is a tuple, list or dict (or namedtuple) of nests, or a leaf: anything else, including
None, numpy arrays and subclasses of list and dict. Dict keys must be strings; dict values are
visited in sorted-key order, so flatten({'b': 1, 'a': 2}) == [2, 1]. Results keep each
container's type, and dicts keep their key order. Functions are called on the leaves in
flatten() order, and exceptions they raise propagate unchanged. Structure errors raise
ValueError naming the path where the nests differ, e.g. "at ['obs'][1]".)doc";

  m.def("map", &Map, py::arg("f"), py::arg("nest"),
        R"doc(Returns a nest of the same structure as `nest` with f(leaf) at each leaf.)doc");
  m.def("map_many", &MapMany, py::arg("f"),
        R"doc(map_many(f, *nests)

Maps f over several nests of the same structure: f receives a tuple with the leaves at one
position, one per nest, in argument order; the result has the structure (and container types)
of the first nest. Raises ValueError naming the path if the structures differ (f may have been
called on earlier leaves by then); container types must match (a list is not a tuple), leaves
may differ in type.)doc");
  m.def("map_many2", &MapMany2, py::arg("f"), py::arg("nest1"), py::arg("nest2"),
        R"doc(Like map_many(f, nest1, nest2), but calls f(leaf1, leaf2).)doc");
  m.def("flatten", &Flatten, py::arg("nest"),
        R"doc(Returns the leaves as a list, depth first: sequences in order, dicts by sorted
key.)doc");
  m.def("pack_as", &PackAs, py::arg("nest"), py::arg("flat"),
        R"doc(Returns a nest with the structure of `nest` whose leaves are the items of `flat`, a
sequence in flatten() order: pack_as(n, flatten(n)) == n. Raises ValueError if the number of
items differs from the number of leaves in `nest`.)doc");
  m.def("front", &Front, py::arg("nest"),
        R"doc(Returns the first leaf in flatten() order; raises ValueError if there is none.)doc");
  m.def("for_each", &ForEach, py::arg("f"), py::arg("nest"),
        R"doc(Calls f(leaf) on every leaf in flatten() order; returns None.)doc");
}
