#include "train/metrics.h"

#include "common/error.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

namespace dtrain {

MetricsLog::MetricsLog(const std::string& out_dir, bool enabled) : out_dir_(out_dir), enabled_(enabled) {
  if (!enabled_) return;
  std::error_code error;
  std::filesystem::create_directories(out_dir_, error);
  if (error) throw Error("cannot create --out-dir " + out_dir_ + ": " + error.message());
  events_.open(out_dir_ + "/metrics.jsonl", std::ios::trunc);
  if (!events_) throw Error("cannot write " + out_dir_ + "/metrics.jsonl: check --out-dir permissions");
}

void MetricsLog::record(const nlohmann::json& event) {
  if (!enabled_) return;
  events_ << event.dump() << '\n';
  events_.flush();  // a crash or preemption keeps everything logged so far
}

void MetricsLog::write_json(const std::string& file_name, const nlohmann::json& value) const {
  if (!enabled_) return;
  const std::string path = out_dir_ + "/" + file_name;
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << value.dump(2) << '\n';
    if (!out) throw Error("cannot write " + path + ": check --out-dir permissions and free space");
  }
  std::filesystem::rename(temporary, path);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t total = std::llround(seconds);
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof text, "%lld:%02lld:%02lld", static_cast<long long>(total / 3600),
                  static_cast<long long>(total / 60 % 60), static_cast<long long>(total % 60));
  } else {
    std::snprintf(text, sizeof text, "%lld:%02lld", static_cast<long long>(total / 60),
                  static_cast<long long>(total % 60));
  }
  return text;
}

}  // namespace dtrain
