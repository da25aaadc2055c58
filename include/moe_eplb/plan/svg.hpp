// A picture of per-rank load: what `moe-eplb demo` and `simulate --svg` draw.
#pragma once

#include <string>
#include <vector>

namespace moe_eplb {

// One line of a per-rank load plot.
struct PlotSeries {
  std::string label;              // e.g. "moe-eplb, rank mode"
  std::vector<double> rank_load;  // (W,)
};

// An SVG image: one panel per series, stacked, all on the same scale, with
// per-rank load bars (the heaviest rank highlighted), a line at the mean and
// the max / mean ratio in each panel's title. `title` heads the image.
std::string balance_svg(const std::string& title, const std::vector<PlotSeries>& series);

}  // namespace moe_eplb
