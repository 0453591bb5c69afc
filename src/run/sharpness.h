// Sharpness: the largest-magnitude eigenvalue of the Hessian of the training
// loss at fixed weights, with its sign (Keskar et al. 2017's "sharp minima";
// measured as in PyHessian, Yao et al. 2020), by power iteration on
// Hessian-vector products. Each product is a double backward through
// autograd: g = dL/dw with a graph, then d(g . v)/dw = H v.
//
// The loss is the mean over a fixed subset (the first `samples` training
// samples, cut into blocks of `block` samples for memory). Block k belongs to
// rank k mod world; each rank sums its blocks' products in float64 and the
// ranks all-reduce the sum, so the estimate does not depend on the number of
// ranks beyond float64 rounding. Every rank runs the same iterations and
// calls the same collectives in the same order.
#pragma once
#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dtrain {

class Communicator;

struct SharpnessOptions {
  int64_t samples = 0;           // the subset: training samples 0 .. samples-1
  int64_t block = 0;             // samples per Hessian-vector product (bounds memory)
  int64_t max_iterations = 100;  // power iterations at most
  double tolerance = 1e-3;       // converged when the estimate changes by less than this, relative (0: never)
};

struct SharpnessResult {
  double top_eigenvalue = NAN;      // the Rayleigh quotient v.Hv of the last iterate, with its sign
  int64_t iterations = 0;
  bool converged = false;           // by tolerance; else it stopped at max_iterations
  double relative_change = NAN;     // of the last iteration's estimate
  std::vector<double> estimates;    // per iteration
  int64_t samples = 0;
  double seconds = 0;
};

// The summed loss of training samples `indices`, with a graph (no reduction
// to a mean: the caller divides by `loss_items`).
using BlockLoss = std::function<at::Tensor(const std::vector<int64_t>& indices)>;

// The start vector: entry j of the parameters' concatenation is
// ((j + 1) * 2654435761 mod 2^32) / 2^32 - 1/2 (Knuth's multiplicative hash),
// then normalized; the same on every rank and in any language (the PyTorch
// reference in tests/run/sharpness_reference.py builds it too).
std::vector<at::Tensor> sharpness_start_vector(const std::vector<at::Tensor>& parameters);

// Power iteration from sharpness_start_vector (collective). `loss_items`:
// the normalizer of the whole subset's loss (its samples, or target tokens).
SharpnessResult top_hessian_eigenvalue(const std::vector<at::Tensor>& parameters, const BlockLoss& block_loss,
                                       double loss_items, Communicator& comm, const SharpnessOptions& options);

// sharpness.json's content, and summary.json's "sharpness".
nlohmann::json sharpness_json(const SharpnessResult& result, const SharpnessOptions& options);
// The one line it prints.
std::string describe(const SharpnessResult& result);

}  // namespace dtrain
