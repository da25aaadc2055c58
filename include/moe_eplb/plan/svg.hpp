// Pictures of balance: per-rank load (what `moe-eplb demo` and
// `simulate --svg` draw) and values over time (what `replay --svg` draws).
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

// One line of a time-series panel: a value per point in time; NaN = none
// there (the line skips it, e.g. a window without a rebalance).
struct TimeSeries {
  std::string label;           // e.g. "moe-eplb, capped"
  std::vector<double> values;  // (num_points,)
};
struct TimePanel {
  std::string title;  // e.g. "max/mean per-rank load on the next window"
  std::vector<TimeSeries> series;
};

// An SVG image: panels stacked on a shared x axis (`x` holds the points'
// positions, e.g. window numbers), each with its own y scale, lines with a
// marker per value, and a legend; series i has the same colour in every
// panel. Series shorter than x are padded with NaN. Never throws; pure.
std::string time_series_svg(const std::string& title, const std::string& x_label,
                            const std::vector<double>& x, const std::vector<TimePanel>& panels);

}  // namespace moe_eplb
