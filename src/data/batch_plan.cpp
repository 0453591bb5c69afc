// The batch split's arithmetic: deriving the missing size and naming the
// nearest valid choices when the sizes do not multiply out.
#include "data/batch_plan.h"

#include "common/error.h"

#include <nlohmann/json.hpp>

#include <string>

namespace dtrain {

std::string BatchPlan::describe() const {
  return "global batch " + std::to_string(global_batch_size) + " = micro " +
         std::to_string(micro_batch_size) + " x accum " + std::to_string(grad_accum_steps) +
         " x world " + std::to_string(world_size);
}

BatchPlan BatchPlan::with_micro_batch(int64_t micro) const {
  BatchPlan plan = *this;
  plan.micro_batch_size = micro;
  plan.grad_accum_steps = local_batch_size() / micro;
  return plan;
}

void BatchPlan::add_to(nlohmann::json& object) const {
  object["micro_batch_size"] = micro_batch_size;
  object["grad_accum_steps"] = grad_accum_steps;
  object["world_size"] = world_size;
  object["global_batch_size"] = global_batch_size;
}

namespace {

std::string num(int64_t value) { return std::to_string(value); }

// Throws the error for a global batch that `unit` (= product of the other
// factors, described by `unit_text`) does not divide.
[[noreturn]] void not_divisible(int64_t global, int64_t unit, const std::string& unit_text,
                                const std::string& derived_name) {
  throw UsageError("global batch " + num(global) + " is not divisible by " + unit_text + " = " +
                   num(unit) + ", so " + derived_name +
                   " is not a whole number; nearest valid global batches: " +
                   nearest_multiples(global, unit));
}

}  // namespace

std::string nearest_multiples(int64_t target, int64_t unit) {
  const int64_t below = (target / unit) * unit;
  const int64_t above = below + unit;
  if (below <= 0) return num(above);
  return num(below) + " or " + num(above);
}

namespace {
// a * b, or a UsageError if it does not fit in 64 bits.
int64_t checked_product(int64_t a, int64_t b) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    throw UsageError("batch sizes too large: " + std::to_string(a) + " x " + std::to_string(b) + " overflows");
  }
  return product;
}
}  // namespace

BatchPlan derive_batch_plan(int64_t micro, int64_t accum, int64_t global, int64_t world) {
  if (world <= 0) throw UsageError("world size must be positive (got " + num(world) + ")");
  if (micro < 0 || accum < 0 || global < 0) {
    throw UsageError("batch sizes must be positive (micro " + num(micro) + ", accum " + num(accum) +
                     ", global " + num(global) + ")");
  }
  const std::string world_text = "world " + num(world);
  BatchPlan plan;
  plan.world_size = world;
  if (micro && global) {
    if (accum) {
      if (checked_product(checked_product(micro, accum), world) != global) {
        throw UsageError("global batch " + num(global) + " != micro " + num(micro) + " x accum " +
                         num(accum) + " x " + world_text + " = " + num(checked_product(checked_product(micro, accum), world)) +
                         "; give only two of --micro-batch-size, --grad-accum-steps, "
                         "--global-batch-size, or make them multiply out");
      }
    } else {
      if (global % (checked_product(micro, world)) != 0) {
        not_divisible(global, checked_product(micro, world), "micro " + num(micro) + " x " + world_text, "accum");
      }
      accum = global / (checked_product(micro, world));
    }
  } else if (global) {
    if (!accum) accum = 1;
    if (global % (checked_product(accum, world)) != 0) {
      not_divisible(global, checked_product(accum, world), "accum " + num(accum) + " x " + world_text, "micro");
    }
    micro = global / (checked_product(accum, world));
  } else if (micro) {
    if (!accum) accum = 1;
    global = checked_product(checked_product(micro, accum), world);
  } else {
    throw UsageError(
        "no batch size given: set two of --micro-batch-size, --grad-accum-steps, "
        "--global-batch-size (or one of micro and global, with accum 1)");
  }
  plan.micro_batch_size = micro;
  plan.grad_accum_steps = accum;
  plan.global_batch_size = global;
  return plan;
}

}  // namespace dtrain
