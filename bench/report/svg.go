package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Chart geometry, in SVG user units (pixels).
const (
	chartWidth = 920
	labelWidth = 250 // group labels left of the plot
	plotLeft   = labelWidth + 10
	plotRight  = chartWidth - 70 // room for the value after the longest bar
	barHeight  = 10
	barGap     = 2
	groupGap   = 14
	headHeight = 100 // title, two subtitle lines, legend
	axisHeight = 30
	maxRatio   = 3.0 // bars beyond this are clipped and marked
)

var targetColor = map[string]string{
	"direct":  "#9a9a9a",
	"sluice":  "#1f63b4",
	"haproxy": "#2e9e44",
	"nginx":   "#e8800c",
	"iocopy":  "#8d5cc0",
}

func color(t string) string {
	if c, ok := targetColor[t]; ok {
		return c
	}
	return "#555555"
}

// chartGroup is one metric of one scenario: a bar per target.
type chartGroup struct {
	label string
	bars  []chartBar
}

type chartBar struct {
	target string
	ratio  float64
}

func chartGroups(tables []table) []chartGroup {
	var gs []chartGroup
	for _, t := range tables {
		for i, m := range t.sc.metrics {
			if !m.chart || t.best[i] == "" {
				continue
			}
			g := chartGroup{label: fmt.Sprintf("%s %s %s", t.sc.key, m.short, arrow(m))}
			for _, tg := range t.targets {
				if c := t.cells[tg][i]; c.ok && c.ratio > 0 {
					g.bars = append(g.bars, chartBar{tg, c.ratio})
				}
			}
			if len(g.bars) > 0 {
				gs = append(gs, g)
			}
		}
	}
	return gs
}

// writeSVG draws grouped horizontal bars: for each charted figure, each
// target's median divided by the best peer's, with a line at 1.
func writeSVG(w *strings.Builder, rd *runData, tables []table) {
	gs := chartGroups(tables)
	top := 0.0
	for _, g := range gs {
		for _, b := range g.bars {
			top = math.Max(top, b.ratio)
		}
	}
	// Scale: up to the largest ratio rounded up to 0.5, at least 1.5, at
	// most maxRatio.
	scale := math.Min(maxRatio, math.Max(1.5, math.Ceil(top*2)/2))
	x := func(r float64) float64 {
		return plotLeft + (plotRight-plotLeft)*math.Min(r, scale)/scale
	}
	height := headHeight + axisHeight + 10
	for _, g := range gs {
		height += len(g.bars)*(barHeight+barGap) + groupGap
	}
	if len(gs) == 0 {
		height += 30
	}

	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(w, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	title := "sluice and its peers: median ÷ best peer's median"
	if rd.isSmoke() {
		title += " (SMOKE RUN, not a measurement)"
	}
	text(w, 12, 22, "start", 15, "bold", title)
	text(w, 12, 40, "start", 12, "", fmt.Sprintf("median of %s round(s), %s, kernel %s, %s",
		orDash(rd.meta["rounds"]), orDash(rd.meta["date"]), orDash(rd.meta["kernel"]), orDash(rd.meta["cpu"])))
	text(w, 12, 56, "start", 12, "", "1 = the best of HAProxy, nginx and Go io.Copy for that figure; ↑ higher is better, ↓ lower is better")

	// Legend: the targets that have bars, in order.
	present := map[string]bool{}
	for _, g := range gs {
		for _, b := range g.bars {
			present[b.target] = true
		}
	}
	lx := 12.0
	for _, t := range targetOrderWith(present) {
		fmt.Fprintf(w, `<rect x="%.1f" y="68" width="12" height="12" fill="%s"/>`+"\n", lx, color(t))
		text(w, lx+17, 78, "start", 12, "", label(t))
		lx += 17 + 8*float64(len([]rune(label(t)))) + 18
	}

	plotTop := float64(headHeight)
	plotBottom := float64(height - axisHeight)
	// Grid every 0.5, the 1.0 line darker.
	for r := 0.0; r <= scale+1e-9; r += 0.5 {
		stroke, width := "#e2e2e2", 1.0
		if r == 1 {
			stroke, width = "#333333", 1.5
		}
		fmt.Fprintf(w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`+"\n",
			x(r), plotTop-4, x(r), plotBottom, stroke, width)
		text(w, x(r), plotBottom+14, "middle", 11, "", fmt.Sprintf("%.1f", r))
	}
	text(w, (plotLeft+plotRight)/2, plotBottom+27, "middle", 11, "", "× best peer")

	y := plotTop
	if len(gs) == 0 {
		text(w, plotLeft, y+16, "start", 12, "", "no figure to compare: no peer produced a result")
	}
	for _, g := range gs {
		gh := float64(len(g.bars) * (barHeight + barGap))
		text(w, labelWidth, y+gh/2+4, "end", 12, "", g.label)
		for _, b := range g.bars {
			x1 := x(b.ratio)
			fmt.Fprintf(w, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="%s"><title>%s: %.2f</title></rect>`+"\n",
				plotLeft, y, x1-plotLeft, barHeight, color(b.target), html.EscapeString(label(b.target)), b.ratio)
			v := fmt.Sprintf("%.2f", b.ratio)
			if b.ratio > scale {
				v += " ▸"
			}
			text(w, x1+4, y+barHeight-1, "start", 10, "", v)
			y += barHeight + barGap
		}
		y += groupGap
	}
	fmt.Fprintf(w, "</svg>\n")
}

func text(w *strings.Builder, x, y float64, anchor string, size int, weight, s string) {
	fw := ""
	if weight != "" {
		fw = fmt.Sprintf(` font-weight="%s"`, weight)
	}
	fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%d"%s fill="#222222">%s</text>`+"\n",
		x, y, anchor, size, fw, html.EscapeString(s))
}

// targetOrderWith returns the present targets, known ones first in order.
func targetOrderWith(present map[string]bool) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range targetOrder {
		seen[t] = true
		if present[t] {
			out = append(out, t)
		}
	}
	for t := range present {
		if !seen[t] {
			out = append(out, t)
		}
	}
	return out
}
