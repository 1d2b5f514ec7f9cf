#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <utility>

#include "bindings/array_pybind.h"
#include "bindings/bindings.h"
#include "core/batching_queue.h"

namespace torchbeast {
namespace python {

void BindBatchingQueue(py::module_& m) {
  py::class_<BatchingQueue, std::shared_ptr<BatchingQueue>>(m, "BatchingQueue", R"doc(
A queue of nests of arrays that hands them out concatenated along `batch_dim`.

Producers call enqueue(nest); a consumer calls dequeue_many() or iterates over the queue.
minimum_batch_size and maximum_batch_size count enqueued nests (each may hold several rows
along batch_dim). dequeue_many() returns as soon as minimum_batch_size nests are queued, or,
with timeout_ms, once that many milliseconds have passed and at least one nest is queued.
enqueue() blocks while maximum_queue_size nests are queued (None: unbounded).
With check_inputs, enqueue() raises ValueError for a nest that differs from the first nest
ever enqueued in structure, dtypes or shapes (other than at batch_dim), or whose arrays
disagree on their size at batch_dim.
close() wakes every blocked caller: enqueue() and dequeue_many() then raise ClosedError,
iteration stops, and nests still queued are dropped. Closing twice raises ClosedError.
Nests are dicts (str keys), lists/tuples and arrays (anything np.asarray takes); arrays are
copied in and handed out as NumPy arrays without copying.)doc")
      .def(py::init<int64_t, int64_t, int64_t, std::optional<int64_t>, bool, std::optional<int64_t>>(),
           py::arg("batch_dim") = 1, py::arg("minimum_batch_size") = 1, py::arg("maximum_batch_size") = 1024,
           py::arg("timeout_ms") = py::none(), py::arg("check_inputs") = true,
           py::arg("maximum_queue_size") = py::none())
      .def(
          "enqueue", [](BatchingQueue& queue, const ArrayNest& nest) { queue.Enqueue(nest); }, py::arg("nest"),
          py::call_guard<py::gil_scoped_release>(),
          "Adds a nest; blocks while the queue is full. Raises ClosedError once closed.")
      .def("dequeue_many", &BatchingQueue::DequeueMany, py::call_guard<py::gil_scoped_release>(),
           "Returns the next batch (see the class docstring). Raises ClosedError once closed.")
      .def("close", &BatchingQueue::Close, py::call_guard<py::gil_scoped_release>(),
           "Wakes every blocked caller with ClosedError. Raises ClosedError if already closed.")
      .def("size", &BatchingQueue::size, "Number of nests queued.")
      .def("is_closed", &BatchingQueue::is_closed)
      .def_property_readonly("batch_dim", &BatchingQueue::batch_dim)
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", [](BatchingQueue& queue) -> ArrayNest {
        std::optional<ArrayNest> batch;
        {
          py::gil_scoped_release release;
          try {
            batch = queue.DequeueMany();
          } catch (const ClosedError&) {
          }
        }
        if (!batch) throw py::stop_iteration();
        return std::move(*batch);
      });
}

}  // namespace python
}  // namespace torchbeast
