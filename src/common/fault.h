// Fault injection for the tests: an environment variable that names the step
// (1-based) at which a fault fires, and optionally the one rank it fires on,
// as "STEP" or "STEP:RANK". Unset, it never fires.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dtrain {

// The text after "KIND:" in environment variable `variable`, or null when it
// is unset or names another kind: a variable that names one of several places
// (DTRAIN_FAULT_EXIT=allgather:3:1, DTRAIN_FAULT_STALL=dataset agreement:1).
inline const char* fault_argument(const char* variable, const char* kind) {
  const char* text = std::getenv(variable);
  const size_t length = std::strlen(kind);
  if (text == nullptr || std::strncmp(text, kind, length) != 0 || text[length] != ':') return nullptr;
  return text + length + 1;
}

struct FaultHook {
  int64_t step = -1;  // -1: never
  int rank = -1;      // -1: every rank

  explicit FaultHook(const char* variable) {
    const char* text = std::getenv(variable);
    if (text == nullptr) return;
    parse(text);
  }
  // A variable naming several places: "KIND:STEP[:RANK]" arms the hook of
  // `kind` only (e.g. DTRAIN_FAULT_EXIT=allgather:3:1).
  FaultHook(const char* variable, const char* kind) {
    if (const char* text = fault_argument(variable, kind)) parse(text);
  }
  bool set() const { return step >= 0; }
  void parse(const char* text) {
    step = std::atoll(text);
    if (const char* colon = std::strchr(text, ':')) rank = std::atoi(colon + 1);
  }
  // Whether it fires at (0-based) optimizer step `step_index` on `on_rank`.
  bool fires(int64_t step_index, int on_rank) const {
    return step_index + 1 == step && (rank < 0 || rank == on_rank);
  }
};

}  // namespace dtrain
