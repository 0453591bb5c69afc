// Power iteration on Hessian-vector products (run/sharpness.h).
#include "run/sharpness.h"

#include "comm/communicator.h"
#include "comm/watchdog.h"
#include "common/error.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

namespace dtrain {

namespace {

// The parameters' concatenation as one float64 vector, and back.
at::Tensor flatten_double(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> flat;
  for (const auto& tensor : tensors) flat.push_back(tensor.detach().reshape({-1}).to(torch::kDouble));
  return torch::cat(flat);
}

std::vector<at::Tensor> shaped_like(const at::Tensor& flat, const std::vector<at::Tensor>& parameters) {
  std::vector<at::Tensor> out;
  int64_t offset = 0;
  for (const auto& parameter : parameters) {
    out.push_back(flat.narrow(0, offset, parameter.numel())
                      .view(parameter.sizes())
                      .to(parameter.options().requires_grad(false)));
    offset += parameter.numel();
  }
  return out;
}

int64_t total_numel(const std::vector<at::Tensor>& parameters) {
  int64_t total = 0;
  for (const auto& parameter : parameters) total += parameter.numel();
  return total;
}

}  // namespace

std::vector<at::Tensor> sharpness_start_vector(const std::vector<at::Tensor>& parameters) {
  const int64_t n = total_numel(parameters);
  // Integer arithmetic: (j + 1) * 2654435761 fits int64 for j < 3.4e9.
  const auto index = torch::arange(1, n + 1, torch::kLong);
  const auto hashed = (index * int64_t{2654435761}).remainder(int64_t{1} << 32);
  auto flat = hashed.to(torch::kDouble) / static_cast<double>(int64_t{1} << 32) - 0.5;
  flat /= flat.norm();
  return shaped_like(flat.to(parameters.front().device()), parameters);
}

SharpnessResult top_hessian_eigenvalue(const std::vector<at::Tensor>& parameters, const BlockLoss& block_loss,
                                       double loss_items, Communicator& comm, const SharpnessOptions& options) {
  if (options.samples <= 0 || options.block <= 0 || options.max_iterations <= 0) {
    throw Error("internal: sharpness needs samples, a block and iterations");
  }
  const auto started = std::chrono::steady_clock::now();
  SharpnessResult result;
  result.samples = options.samples;
  std::vector<at::Tensor> v = sharpness_start_vector(parameters);
  const int64_t blocks = (options.samples + options.block - 1) / options.block;
  const auto device = parameters.front().device();
  for (int64_t iteration = 1; iteration <= options.max_iterations; ++iteration) {
    // H v over this rank's blocks, summed in float64.
    at::Tensor hv = torch::zeros({total_numel(parameters)}, torch::TensorOptions().dtype(torch::kDouble).device(device));
    for (int64_t k = comm.rank(); k < blocks; k += comm.world_size()) {
      std::vector<int64_t> indices;
      for (int64_t i = k * options.block; i < std::min(options.samples, (k + 1) * options.block); ++i) {
        indices.push_back(i);
      }
      const at::Tensor loss = block_loss(indices) / loss_items;
      const auto grads = torch::autograd::grad({loss}, parameters, {}, /*retain_graph=*/true, /*create_graph=*/true);
      at::Tensor dot = torch::zeros({}, grads.front().options());
      for (size_t i = 0; i < grads.size(); ++i) dot = dot + (grads[i] * v[i]).sum();
      const auto products = torch::autograd::grad({dot}, parameters, {}, /*retain_graph=*/false,
                                                  /*create_graph=*/false, /*allow_unused=*/true);
      std::vector<at::Tensor> filled;
      for (size_t i = 0; i < products.size(); ++i) {
        filled.push_back(products[i].defined() ? products[i] : torch::zeros_like(parameters[i]));
      }
      hv += flatten_double(filled);
    }
    {
      CollectiveWatchdog::Scope watched(comm.watchdog(), "sharpness all-reduce");
      comm.all_reduce(hv);
    }
    // The Rayleigh quotient of the unit vector v, then the next iterate.
    const double estimate = torch::dot(flatten_double(v), hv).item<double>();
    const double norm = hv.norm().item<double>();
    if (!std::isfinite(estimate) || !std::isfinite(norm)) {
      throw Error("the Hessian-vector product is not finite at these weights: sharpness cannot be measured");
    }
    if (!result.estimates.empty()) {
      result.relative_change = std::abs(estimate - result.estimates.back()) / std::max(std::abs(estimate), 1e-30);
    }
    result.estimates.push_back(estimate);
    result.top_eigenvalue = estimate;
    result.iterations = iteration;
    if (norm == 0) {  // v is in the Hessian's null space: 0 is an eigenvalue, and nothing is larger here
      result.converged = true;
      break;
    }
    v = shaped_like(hv / norm, parameters);
    if (options.tolerance > 0 && result.relative_change < options.tolerance) {
      result.converged = true;
      break;
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

nlohmann::json sharpness_json(const SharpnessResult& result, const SharpnessOptions& options) {
  auto finite = [](double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); };
  return {{"top_eigenvalue", finite(result.top_eigenvalue)},
          {"iterations", result.iterations},
          {"stopped", result.converged ? "converged" : "max iterations"},
          {"relative_change", finite(result.relative_change)},
          {"tolerance", options.tolerance},
          {"max_iterations", options.max_iterations},
          {"samples", result.samples},
          {"block", options.block},
          {"estimates", result.estimates},
          {"seconds", result.seconds},
          {"method", "power iteration on Hessian-vector products (double backward), fp32, the mean training loss "
                     "over the first `samples` training samples"}};
}

std::string describe(const SharpnessResult& result) {
  char line[256];
  std::snprintf(line, sizeof line,
                "sharpness: top Hessian eigenvalue %.6g over %lld training samples (%s after %lld iterations, "
                "relative change %.2g; %.1f s)",
                result.top_eigenvalue, static_cast<long long>(result.samples),
                result.converged ? "converged" : "stopped at the iteration limit",
                static_cast<long long>(result.iterations), result.relative_change, result.seconds);
  return line;
}

}  // namespace dtrain
