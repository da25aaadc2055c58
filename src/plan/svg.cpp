// Standalone SVGs. Per-rank load bars: one panel per series on a shared
// scale, so "before" and "after" compare at a glance without a legend. Time
// series: panels on a shared x axis, one colour per series in all panels.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "moe_eplb/plan/svg.hpp"

namespace moe_eplb {
namespace {

constexpr double kWidth = 960;
constexpr double kLeft = 70;  // room for y tick labels
constexpr double kRight = 24;
constexpr double kTop = 56;  // image title
constexpr double kPanelHeight = 150;
constexpr double kPanelGap = 60;  // panel title above each plot area
constexpr double kBottom = 44;    // x axis caption
constexpr const char* kColors[] = {"#9a9a9a", "#e08214", "#2166ac", "#35978f", "#8073ac"};
constexpr const char* kMaxColor = "#c51b1b";
// Time-series lines: distinct hues, the first one neutral (a "do nothing" policy).
constexpr const char* kLineColors[] = {"#9a9a9a", "#e08214", "#8073ac", "#2166ac",
                                       "#1b7837", "#c51b7d", "#35978f"};

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string number(double value, int decimals = 1) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
}

// 12, 1.5k, 230k, 4.2M: compact tick labels.
std::string compact(double value) {
  if (value >= 1e6) return number(value / 1e6, value >= 1e7 ? 0 : 1) + "M";
  if (value >= 1e3) return number(value / 1e3, value >= 1e4 ? 0 : 1) + "k";
  return number(value, 0);
}

// A round tick step giving about `ticks` intervals up to `top`.
double nice_step(double top, int ticks) {
  const double raw = top / ticks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double factor : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (raw <= factor * magnitude) return factor * magnitude;
  }
  return 10.0 * magnitude;
}

}  // namespace

std::string balance_svg(const std::string& title, const std::vector<PlotSeries>& series) {
  double scale_top = 0.0;
  std::size_t num_ranks = 1;
  for (const PlotSeries& s : series) {
    for (double load : s.rank_load) scale_top = std::max(scale_top, load);
    num_ranks = std::max(num_ranks, s.rank_load.size());
  }
  if (scale_top <= 0) scale_top = 1.0;
  const double step = nice_step(scale_top * 1.12, 4);
  scale_top = std::ceil(scale_top * 1.12 / step) * step;

  const double plot_width = kWidth - kLeft - kRight;
  const double height =
      kTop + static_cast<double>(series.size()) * (kPanelGap + kPanelHeight) + kBottom;
  const double slot = plot_width / static_cast<double>(num_ranks);
  const double bar = std::max(1.0, slot * 0.78);

  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << kWidth << ' ' << height
      << "\" font-family=\"Helvetica, Arial, sans-serif\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << kLeft << "\" y=\"30\" font-size=\"19\" font-weight=\"bold\" fill=\"#222\">"
      << escape(title) << "</text>\n"
      << "<text x=\"" << kLeft
      << "\" y=\"48\" font-size=\"12.5\" fill=\"#555\">tokens received per rank; dashed line = "
         "mean, red bar = busiest rank (it sets the step time)</text>\n";

  for (std::size_t i = 0; i < series.size(); ++i) {
    const PlotSeries& s = series[i];
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    const double top = kTop + static_cast<double>(i) * (kPanelGap + kPanelHeight) + kPanelGap;
    const double bottom = top + kPanelHeight;
    const auto y_of = [&](double load) { return bottom - load / scale_top * kPanelHeight; };

    double total = 0.0, max_load = 0.0;
    double min_load = s.rank_load.empty() ? 0.0 : s.rank_load[0];
    std::size_t max_rank = 0;
    for (std::size_t r = 0; r < s.rank_load.size(); ++r) {
      total += s.rank_load[r];
      min_load = std::min(min_load, s.rank_load[r]);
      if (s.rank_load[r] > max_load) {
        max_load = s.rank_load[r];
        max_rank = r;
      }
    }
    const double mean = s.rank_load.empty() ? 0.0 : total / static_cast<double>(s.rank_load.size());
    const double ratio = mean > 0 ? max_load / mean : 1.0;

    // Panel title: label, then the number that matters.
    svg << "<text x=\"" << kLeft << "\" y=\"" << top - 14 << "\" font-size=\"15\" fill=\"#222\">"
        << "<tspan font-weight=\"bold\" fill=\"" << color << "\">" << escape(s.label)
        << "</tspan><tspan dx=\"14\">max / mean =</tspan><tspan dx=\"5\" font-weight=\"bold\">"
        << number(ratio, 2) << "</tspan>";
    if (mean > 0) {
      svg << "<tspan dx=\"14\" font-size=\"12.5\" fill=\"#666\">ranks range from "
          << number(min_load / mean, 2) << "\u00d7 to " << number(ratio, 2)
          << "\u00d7 the mean</tspan>";
    }
    svg << "</text>\n";
    // Grid and y ticks.
    for (double tick = 0.0; tick <= scale_top + step / 2; tick += step) {
      const double y = y_of(tick);
      svg << "<line x1=\"" << kLeft << "\" x2=\"" << kWidth - kRight << "\" y1=\"" << y
          << "\" y2=\"" << y << "\" stroke=\"" << (tick == 0 ? "#444" : "#e4e4e4")
          << "\" stroke-width=\"1\"/>\n"
          << "<text x=\"" << kLeft - 8 << "\" y=\"" << y + 4
          << "\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">" << compact(tick)
          << "</text>\n";
    }
    // Bars.
    for (std::size_t r = 0; r < s.rank_load.size(); ++r) {
      const double x = kLeft + static_cast<double>(r) * slot + (slot - bar) / 2;
      const double y = y_of(s.rank_load[r]);
      svg << "<rect x=\"" << number(x, 2) << "\" y=\"" << number(y, 2) << "\" width=\""
          << number(bar, 2) << "\" height=\"" << number(bottom - y, 2) << "\" fill=\""
          << (r == max_rank && max_load > 0 ? kMaxColor : color) << "\"><title>rank " << r << ": "
          << number(s.rank_load[r], 0) << " tokens</title></rect>\n";
    }
    // Mean line, labelled at the right end.
    if (mean > 0) {
      const double y = y_of(mean);
      svg << "<line x1=\"" << kLeft << "\" x2=\"" << kWidth - kRight << "\" y1=\"" << y
          << "\" y2=\"" << y
          << "\" stroke=\"#222\" stroke-width=\"1.4\" stroke-dasharray=\"6 4\"/>\n"
          << "<text x=\"" << kWidth - kRight << "\" y=\"" << y - 5
          << "\" font-size=\"11\" fill=\"#222\" text-anchor=\"end\">mean " << compact(mean)
          << "</text>\n";
      const double x = kLeft + (static_cast<double>(max_rank) + 0.5) * slot;
      svg << "<text x=\"" << number(x, 2) << "\" y=\"" << number(y_of(max_load) - 5, 2)
          << "\" font-size=\"11\" fill=\"" << kMaxColor << "\" text-anchor=\"middle\">"
          << number(ratio, 2) << "\u00d7</text>\n";
    }
    // Rank numbers under the bars, thinned to stay legible.
    const std::size_t every = std::max<std::size_t>(1, (s.rank_load.size() + 31) / 32);
    for (std::size_t r = 0; r < s.rank_load.size(); r += every) {
      svg << "<text x=\"" << number(kLeft + (static_cast<double>(r) + 0.5) * slot, 2) << "\" y=\""
          << bottom + 13 << "\" font-size=\"10\" fill=\"#777\" "
          << "text-anchor=\"middle\">" << r << "</text>\n";
    }
  }
  svg << "<text x=\"" << kLeft + plot_width / 2 << "\" y=\"" << height - 10
      << "\" font-size=\"12.5\" fill=\"#444\" text-anchor=\"middle\">EP rank</text>\n"
      << "</svg>\n";
  return svg.str();
}

std::string time_series_svg(const std::string& title, const std::string& x_label,
                            const std::vector<double>& x, const std::vector<TimePanel>& panels) {
  constexpr double kLegendRow = 20;
  std::size_t num_series = 0;
  for (const TimePanel& panel : panels) num_series = std::max(num_series, panel.series.size());
  const std::size_t legend_per_row = 4;
  const double legend_height =
      kLegendRow * static_cast<double>((num_series + legend_per_row - 1) / legend_per_row);
  const double plot_width = kWidth - kLeft - kRight;
  const double first_top = kTop + legend_height;
  const double height =
      first_top + static_cast<double>(panels.size()) * (kPanelGap + kPanelHeight) + kBottom;

  double x_min = 0.0, x_max = 1.0;
  if (!x.empty()) {
    x_min = *std::min_element(x.begin(), x.end());
    x_max = *std::max_element(x.begin(), x.end());
  }
  if (x_max <= x_min) x_max = x_min + 1.0;
  const auto x_of = [&](double value) {
    return kLeft + (value - x_min) / (x_max - x_min) * plot_width;
  };
  const auto value_at = [](const TimeSeries& s, std::size_t i) {
    return i < s.values.size() ? s.values[i] : std::nan("");
  };
  const auto color_of = [](std::size_t i) {
    return kLineColors[i % (sizeof(kLineColors) / sizeof(kLineColors[0]))];
  };

  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << kWidth << ' ' << height
      << "\" font-family=\"Helvetica, Arial, sans-serif\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << kLeft << "\" y=\"30\" font-size=\"19\" font-weight=\"bold\" fill=\"#222\">"
      << escape(title) << "</text>\n";
  // Legend: the labels of the panel with the most series.
  for (const TimePanel& panel : panels) {
    if (panel.series.size() != num_series) continue;
    for (std::size_t i = 0; i < num_series; ++i) {
      const double lx = kLeft + static_cast<double>(i % legend_per_row) * (plot_width / 4);
      const double ly = 50 + kLegendRow * static_cast<double>(i / legend_per_row);
      svg << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"" << ly - 4 << "\" y2=\""
          << ly - 4 << "\" stroke=\"" << color_of(i) << "\" stroke-width=\"3\"/>\n"
          << "<text x=\"" << lx + 28 << "\" y=\"" << ly << "\" font-size=\"12.5\" fill=\"#222\">"
          << escape(panel.series[i].label) << "</text>\n";
    }
    break;
  }

  for (std::size_t p = 0; p < panels.size(); ++p) {
    const TimePanel& panel = panels[p];
    const double top = first_top + static_cast<double>(p) * (kPanelGap + kPanelHeight) + kPanelGap;
    const double bottom = top + kPanelHeight;
    // y range: the values' span, padded; a flat series gets a unit range.
    double low = std::numeric_limits<double>::infinity(), high = -low;
    for (const TimeSeries& s : panel.series) {
      for (double value : s.values) {
        if (!std::isfinite(value)) continue;
        low = std::min(low, value);
        high = std::max(high, value);
      }
    }
    if (!std::isfinite(low)) {
      low = 0.0;
      high = 1.0;
    }
    if (low >= 0 && low < 0.35 * high) low = 0.0;  // counts: from zero
    const double span = high > low ? high - low : std::max(1.0, std::abs(high));
    const double step = nice_step(span * 1.1, 4);
    const double axis_low = std::floor(low / step) * step;
    const double axis_high =
        std::max(axis_low + step, std::ceil((high + span * 0.05) / step) * step);
    const auto y_of = [&](double value) {
      return bottom - (value - axis_low) / (axis_high - axis_low) * kPanelHeight;
    };
    svg << "<text x=\"" << kLeft << "\" y=\"" << top - 14 << "\" font-size=\"15\" fill=\"#222\">"
        << escape(panel.title) << "</text>\n";
    const int decimals = step < 0.01 ? 3 : step < 0.1 ? 2 : step < 1 ? 1 : 0;
    for (double tick = axis_low; tick <= axis_high + step / 2; tick += step) {
      const double y = y_of(tick);
      svg << "<line x1=\"" << kLeft << "\" x2=\"" << kWidth - kRight << "\" y1=\"" << number(y, 2)
          << "\" y2=\"" << number(y, 2) << "\" stroke=\"" << (tick == axis_low ? "#444" : "#e4e4e4")
          << "\" stroke-width=\"1\"/>\n"
          << "<text x=\"" << kLeft - 8 << "\" y=\"" << number(y + 4, 2)
          << "\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">"
          << (step >= 1000 ? compact(tick) : number(tick, decimals)) << "</text>\n";
    }
    for (std::size_t i = 0; i < panel.series.size(); ++i) {
      const TimeSeries& s = panel.series[i];
      std::string points;
      for (std::size_t t = 0; t < x.size(); ++t) {
        const double value = value_at(s, t);
        if (!std::isfinite(value)) continue;
        points += number(x_of(x[t]), 2) + "," + number(y_of(value), 2) + " ";
        svg << "<circle cx=\"" << number(x_of(x[t]), 2) << "\" cy=\"" << number(y_of(value), 2)
            << "\" r=\"2.6\" fill=\"" << color_of(i) << "\"><title>" << escape(s.label) << ", "
            << number(x[t], 0) << ": " << number(value, 3) << "</title></circle>\n";
      }
      if (!points.empty()) {
        svg << "<polyline fill=\"none\" stroke=\"" << color_of(i)
            << "\" stroke-width=\"1.8\" stroke-opacity=\"0.85\" points=\"" << points << "\"/>\n";
      }
    }
    // x ticks under every panel, thinned to stay legible.
    const std::size_t every = std::max<std::size_t>(1, (x.size() + 19) / 20);
    for (std::size_t t = 0; t < x.size(); t += every) {
      svg << "<text x=\"" << number(x_of(x[t]), 2) << "\" y=\"" << bottom + 13
          << "\" font-size=\"10\" fill=\"#777\" text-anchor=\"middle\">" << number(x[t], 0)
          << "</text>\n";
    }
  }
  svg << "<text x=\"" << kLeft + plot_width / 2 << "\" y=\"" << height - 10
      << "\" font-size=\"12.5\" fill=\"#444\" text-anchor=\"middle\">" << escape(x_label)
      << "</text>\n</svg>\n";
  return svg.str();
}

}  // namespace moe_eplb
