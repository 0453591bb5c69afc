// Precompiled header: the heavy, stable headers most translation units need.
// Compiling torch/torch.h costs ~25 s; precompiled once it costs ~1 s per TU.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>
