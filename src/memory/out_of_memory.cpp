// The out-of-memory protocol: every rank learns whether any ran out, and all
// redo the step with half the micro-batch.
#include "memory/out_of_memory.h"

#include "common/error.h"
#include "memory/memory.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dtrain {

int64_t halved_micro_batch(int64_t micro, int64_t local_batch) {
  for (int64_t candidate = micro / 2; candidate >= 1; --candidate) {
    if (local_batch % candidate == 0) return candidate;
  }
  return 0;
}

OutOfMemoryGuard::OutOfMemoryGuard(const Config& config, Communicator& control, const c10::Device& device)
    : control_(control), device_(device) {
  if (fault_.set() && (fault_.step < 2 || fault_.rank < 0)) {
    throw UsageError("DTRAIN_FAULT_OOM must be STEP:RANK with STEP >= 2 (got '" +
                     std::string(std::getenv("DTRAIN_FAULT_OOM")) + "')");
  }
  active_ = device.is_cuda() || config.batch.memory_budget > 0 || fault_.step > 0;
}

void OutOfMemoryGuard::before_step(int64_t step, const MemoryMeter& memory) {
  if (!fault_.fires(step, control_.rank()) || fault_applied_ || !device_.is_cpu() ||
      !memory.measures()) {
    return;
  }
  fault_applied_ = true;  // not again for the retry, which has its own smaller peak
  // A step's peak repeats exactly when its shapes do: one byte less than the
  // last one fails this step's micro-batch, and any smaller one fits.
  set_cpu_memory_budget(memory.resident() + memory.last_activations() - 1);
}

bool OutOfMemoryGuard::any_rank_failed(bool failed_here) {
  if (!active_) return false;
  auto flag = at::full({1}, failed_here ? 1.0 : 0.0, at::kDouble);
  control_.all_reduce(flag, ReduceOp::Max);
  return flag.item<double>() > 0;
}

BatchPlan OutOfMemoryGuard::smaller_split(const BatchPlan& plan, int64_t step) {
  release_cached_memory(device_);
  const int64_t micro = halved_micro_batch(plan.micro_batch_size, plan.local_batch_size());
  if (micro == 0) {
    throw Error("out of memory at step " + std::to_string(step + 1) +
                " with a micro-batch of 1: nothing is left to split; raise --memory-budget, use a GPU with more "
                "memory, or a smaller model (--block-size, --n-embd, --hidden)" +
                (message_.empty() ? std::string() : " (this rank: " + message_ + ")"));
  }
  const BatchPlan smaller = plan.with_micro_batch(micro);
  nlohmann::json event = {{"event", "out_of_memory"},
                          {"step", step + 1},
                          {"from_micro_batch_size", plan.micro_batch_size},
                          {"from_grad_accum_steps", plan.grad_accum_steps},
                          {"micro_batch_size", smaller.micro_batch_size},
                          {"grad_accum_steps", smaller.grad_accum_steps}};
  if (!message_.empty()) event["message"] = message_;  // this rank's, when it was one that ran out
  if (control_.rank() == 0) {
    std::fprintf(stderr, "step %lld: out of memory on at least one rank; redoing the step as %s (was micro %lld x accum %lld)\n",
                 static_cast<long long>(step + 1), smaller.describe().c_str(),
                 static_cast<long long>(plan.micro_batch_size), static_cast<long long>(plan.grad_accum_steps));
    std::fflush(stderr);
  }
  message_.clear();
  history_.push_back(event);
  return smaller;
}

std::vector<nlohmann::json> OutOfMemoryGuard::take_events() {
  std::vector<nlohmann::json> events(history_.begin() + static_cast<std::ptrdiff_t>(logged_), history_.end());
  logged_ = history_.size();
  return events;
}

}  // namespace dtrain
