// How one optimizer step's global batch is split: micro-batch x accumulation
// steps x world size. A pure function derives the missing size from the given
// ones and rejects splits that do not multiply out exactly.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>

namespace dtrain {

struct BatchPlan {
  int64_t micro_batch_size = 0;   // samples per rank per forward/backward
  int64_t grad_accum_steps = 0;   // micro-batches per rank per optimizer step
  int64_t world_size = 0;         // ranks
  int64_t global_batch_size = 0;  // = micro_batch_size * grad_accum_steps * world_size

  // Samples each rank consumes per optimizer step.
  int64_t local_batch_size() const { return micro_batch_size * grad_accum_steps; }
  // "global batch 4096 = micro 64 x accum 16 x world 4"
  std::string describe() const;
  // The same global batch and world, `micro` samples per micro-batch (it
  // divides local_batch_size(): --micro-batch-size auto, an out-of-memory
  // re-split, a resumed re-split).
  BatchPlan with_micro_batch(int64_t micro) const;
  // Its four sizes as JSON fields of `object` (summary.json, trainer.json,
  // noise_scale.json): micro_batch_size, grad_accum_steps, world_size,
  // global_batch_size.
  void add_to(nlohmann::json& object) const;
};

// The multiples of `unit` nearest to `target`, as "a or b" (only the one
// above when none is below): the valid batches an error suggests.
std::string nearest_multiples(int64_t target, int64_t unit);

// Any two of micro, accum and global determine the third (0 = not given);
// accum defaults to 1 when only one of micro and global is given. Throws
// UsageError naming the numbers and the nearest valid choices.
BatchPlan derive_batch_plan(int64_t micro_batch_size, int64_t grad_accum_steps,
                            int64_t global_batch_size, int64_t world_size);

}  // namespace dtrain
