#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "bindings/array_pybind.h"
#include "bindings/bindings.h"
#include "core/dynamic_batcher.h"

namespace torchbeast {
namespace python {

void BindDynamicBatcher(py::module_& m) {
  using Batch = DynamicBatcher::Batch;
  py::class_<DynamicBatcher, std::shared_ptr<DynamicBatcher>> batcher(m, "DynamicBatcher", R"doc(
Batches calls from many threads for one consumer, such as an inference model.

Callers call compute(inputs), which blocks until the consumer has answered. The consumer
iterates over the batcher (or calls get_batch()) and gets Batch objects: batch.get_inputs() is
every caller's inputs concatenated along `batch_dim`, and batch.set_outputs(outputs) splits
`outputs` back along `batch_dim` (each caller gets as many rows as it sent) and wakes the
callers. A batch holds between minimum_batch_size and maximum_batch_size callers; with
timeout_ms, a smaller batch (at least one caller) is handed out once that many milliseconds have
passed. With check_outputs, set_outputs() checks every output array first. A bad output nest
raises ValueError in set_outputs() and in every caller's compute().
A Batch dropped without set_outputs() fails its callers with BatchDroppedError.
close() fails callers still waiting to be batched with ClosedError and ends iteration; batches
already handed out stay valid. Closing twice raises ClosedError.)doc");

  py::class_<Batch, std::shared_ptr<Batch>>(m, "Batch", "One batch of DynamicBatcher calls.")
      .def("get_inputs", &Batch::inputs, "The callers' inputs, concatenated along batch_dim (no copy).")
      .def(
          "set_outputs", [](Batch& batch, const ArrayNest& outputs) { batch.SetOutputs(outputs); }, py::arg("outputs"),
          py::call_guard<py::gil_scoped_release>(),
          "Answers every caller with its rows of `outputs`. Raises ValueError for outputs of the "
          "wrong batch size and RuntimeError if outputs were already set.")
      .def_property_readonly("num_callers", &Batch::num_callers)
      .def_property_readonly("batch_size", &Batch::batch_size, "Total size of the inputs along batch_dim.");

  batcher
      .def(py::init<int64_t, int64_t, int64_t, std::optional<int64_t>, bool>(), py::arg("batch_dim") = 1,
           py::arg("minimum_batch_size") = 1, py::arg("maximum_batch_size") = 1024, py::arg("timeout_ms") = py::none(),
           py::arg("check_outputs") = true)
      .def(
          "compute", [](DynamicBatcher& b, const ArrayNest& inputs) { return b.Compute(inputs); }, py::arg("inputs"),
          py::call_guard<py::gil_scoped_release>(),
          "Submits `inputs` and returns this caller's part of the outputs. Raises ClosedError, "
          "BatchDroppedError or ValueError when the batch fails.")
      .def(
          "get_batch",
          [](DynamicBatcher& b) {
            py::gil_scoped_release release;
            return std::shared_ptr<Batch>(b.GetBatch());
          },
          "Returns the next Batch. Raises ClosedError once closed.")
      .def("close", &DynamicBatcher::Close, py::call_guard<py::gil_scoped_release>())
      .def("size", &DynamicBatcher::size, "Number of callers waiting to be batched.")
      .def("is_closed", &DynamicBatcher::is_closed)
      .def_property_readonly("batch_dim", &DynamicBatcher::batch_dim)
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", [](DynamicBatcher& b) -> std::shared_ptr<Batch> {
        std::shared_ptr<Batch> batch;
        {
          py::gil_scoped_release release;
          try {
            batch = b.GetBatch();
          } catch (const ClosedError&) {
          }
        }
        if (!batch) throw py::stop_iteration();
        return batch;
      });

  m.def(
      "_bench_compute",
      [](std::shared_ptr<DynamicBatcher> batcher, int num_callers, int calls_per_caller, const ArrayNest& inputs) {
        // Like actor threads: C++ callers that never hold the GIL.
        std::vector<std::vector<double>> latencies(num_callers);
        {
          py::gil_scoped_release release;
          std::vector<std::thread> threads;
          for (int c = 0; c < num_callers; ++c) {
            threads.emplace_back([&, c] {
              latencies[c].reserve(calls_per_caller);
              try {
                for (int i = 0; i < calls_per_caller; ++i) {
                  auto start = std::chrono::steady_clock::now();
                  batcher->Compute(inputs);
                  latencies[c].push_back(
                      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
                }
              } catch (const std::exception&) {
                // The batcher was closed or the batch failed: this caller stops early.
              }
            });
          }
          for (auto& t : threads) t.join();
        }
        std::vector<double> all;
        for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
        return all;
      },
      py::arg("batcher"), py::arg("num_callers"), py::arg("calls_per_caller"), py::arg("inputs"),
      "For benchmarks: num_callers C++ threads each call batcher.compute(inputs) calls_per_caller "
      "times; returns every call's latency in microseconds.");
}

}  // namespace python
}  // namespace torchbeast
