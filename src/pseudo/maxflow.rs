//! Exact max-flow / min-cut by Boykov and Kolmogorov's algorithm ("An experimental comparison of
//! min-cut/max-flow algorithms for energy minimization in vision", PAMI 2004): two search trees
//! grown from the terminals, augmentation along the path where they meet, adoption of orphans.
//! Fast on the sparse grid graphs of image segmentation.

const NONE: u32 = u32::MAX;
/// `parent` of a node whose tree parent is its terminal.
const TERMINAL: u32 = u32::MAX - 1;
/// `parent` of a node that lost its tree parent and waits for adoption.
const ORPHAN: u32 = u32::MAX - 2;

#[derive(Clone, Copy)]
struct Node {
    /// First outgoing arc, or NONE.
    first: u32,
    /// Arc to the tree parent (from this node), TERMINAL, ORPHAN, or NONE for a free node.
    parent: u32,
    /// Residual capacity to the sink when negative, from the source when positive.
    tr_cap: f32,
    /// Which tree the node is in (meaningful when `parent != NONE`).
    in_sink_tree: bool,
    in_active_queue: bool,
    /// Time stamp and distance to the terminal, a heuristic that keeps the trees shallow.
    ts: u32,
    dist: u32,
}

#[derive(Clone, Copy)]
struct Arc {
    head: u32,
    next: u32,
    sister: u32,
    r_cap: f32,
}

/// A directed graph with source and sink t-links. Build it with [`add_edge`](Self::add_edge) and
/// [`add_tweights`](Self::add_tweights), call [`maxflow`](Self::maxflow), then read the cut with
/// [`in_source_segment`](Self::in_source_segment). [`reset`](Self::reset) reuses the allocations.
pub struct MaxFlow {
    nodes: Vec<Node>,
    arcs: Vec<Arc>,
    flow: f64,
    active: std::collections::VecDeque<u32>,
    orphans: std::collections::VecDeque<u32>,
    time: u32,
}

impl MaxFlow {
    /// A graph of `n` nodes with room for `edges_hint` edges (each edge is two arcs).
    pub fn new(n: usize, edges_hint: usize) -> Self {
        let mut g = MaxFlow {
            nodes: Vec::new(),
            arcs: Vec::with_capacity(2 * edges_hint),
            flow: 0.0,
            active: Default::default(),
            orphans: Default::default(),
            time: 0,
        };
        g.reset(n);
        g
    }

    /// Clears the graph to `n` isolated nodes, keeping the allocations.
    pub fn reset(&mut self, n: usize) {
        assert!(n < ORPHAN as usize, "MaxFlow: {n} nodes exceeds the u32 index space");
        self.nodes.clear();
        self.nodes.resize(
            n,
            Node { first: NONE, parent: NONE, tr_cap: 0.0, in_sink_tree: false, in_active_queue: false, ts: 0, dist: 0 },
        );
        self.arcs.clear();
        self.flow = 0.0;
        self.active.clear();
        self.orphans.clear();
        self.time = 0;
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Adds an edge i -> j of capacity `cap` and j -> i of capacity `rev_cap` (both >= 0).
    pub fn add_edge(&mut self, i: usize, j: usize, cap: f32, rev_cap: f32) {
        debug_assert!(i != j && cap >= 0.0 && rev_cap >= 0.0);
        let a = self.arcs.len() as u32;
        let (iu, ju) = (i as u32, j as u32);
        self.arcs.push(Arc { head: ju, next: self.nodes[i].first, sister: a + 1, r_cap: cap });
        self.arcs.push(Arc { head: iu, next: self.nodes[j].first, sister: a, r_cap: rev_cap });
        self.nodes[i].first = a;
        self.nodes[j].first = a + 1;
    }

    /// Adds capacities source -> i and i -> sink. The part both share is cut whatever the
    /// partition, so it goes straight into the flow and only the difference is kept.
    pub fn add_tweights(&mut self, i: usize, source_cap: f32, sink_cap: f32) {
        let (mut cs, mut ct) = (source_cap, sink_cap);
        let delta = self.nodes[i].tr_cap;
        if delta > 0.0 {
            cs += delta;
        } else {
            ct -= delta;
        }
        self.flow += cs.min(ct) as f64;
        self.nodes[i].tr_cap = cs - ct;
    }

    /// After [`maxflow`](Self::maxflow): whether node i is on the source side of the minimum cut
    /// (nodes reachable from the source in the residual graph).
    pub fn in_source_segment(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.parent != NONE && !n.in_sink_tree
    }

    fn set_active(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        if !n.in_active_queue {
            n.in_active_queue = true;
            self.active.push_back(i);
        }
    }

    /// The next active node that is still in a tree.
    fn next_active(&mut self) -> Option<u32> {
        while let Some(i) = self.active.pop_front() {
            let n = &mut self.nodes[i as usize];
            n.in_active_queue = false;
            if n.parent != NONE {
                return Some(i);
            }
        }
        None
    }

    /// Computes the maximum flow (= the minimum cut's capacity, including the t-link shares
    /// folded in by `add_tweights`).
    pub fn maxflow(&mut self) -> f64 {
        self.active.clear();
        self.orphans.clear();
        self.time = 0;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.in_active_queue = false;
            n.ts = 0;
            if n.tr_cap != 0.0 {
                n.in_sink_tree = n.tr_cap < 0.0;
                n.parent = TERMINAL;
                n.dist = 1;
                self.set_active(i as u32);
            } else {
                n.parent = NONE;
            }
        }
        let mut current: Option<u32> = None;
        loop {
            // Keep growing from the node of the last augmentation while it stays in a tree.
            let i = match current.filter(|&c| self.nodes[c as usize].parent != NONE) {
                Some(c) => c,
                None => match self.next_active() {
                    Some(i) => i,
                    None => break,
                },
            };
            let meeting_arc = self.grow(i);
            self.time += 1;
            match meeting_arc {
                Some(a) => {
                    current = Some(i);
                    self.augment(a);
                    self.adopt_orphans();
                }
                None => current = None,
            }
        }
        self.flow
    }

    /// Grows the tree of node i by one layer; returns an arc source-tree -> sink-tree if the
    /// trees touch.
    fn grow(&mut self, i: u32) -> Option<u32> {
        let node = self.nodes[i as usize];
        let mut a = node.first;
        while a != NONE {
            let arc = self.arcs[a as usize];
            // Capacity in the direction away from i's terminal.
            let cap = if node.in_sink_tree { self.arcs[arc.sister as usize].r_cap } else { arc.r_cap };
            if cap > 0.0 {
                let j = arc.head;
                let nj = self.nodes[j as usize];
                if nj.parent == NONE {
                    let n = &mut self.nodes[j as usize];
                    n.in_sink_tree = node.in_sink_tree;
                    n.parent = arc.sister;
                    n.ts = node.ts;
                    n.dist = node.dist + 1;
                    self.set_active(j);
                } else if nj.in_sink_tree != node.in_sink_tree {
                    return Some(if node.in_sink_tree { arc.sister } else { a });
                } else if nj.ts <= node.ts && nj.dist > node.dist {
                    // j is in the same tree: make i its parent if that shortens its path.
                    let n = &mut self.nodes[j as usize];
                    n.parent = arc.sister;
                    n.ts = node.ts;
                    n.dist = node.dist + 1;
                }
            }
            a = arc.next;
        }
        None
    }

    fn make_orphan(&mut self, i: u32) {
        self.nodes[i as usize].parent = ORPHAN;
        self.orphans.push_back(i);
    }

    /// Pushes the bottleneck flow along source -> ... -> tail(mid) -> head(mid) -> ... -> sink.
    fn augment(&mut self, mid: u32) {
        let tail = self.arcs[self.arcs[mid as usize].sister as usize].head;
        let head = self.arcs[mid as usize].head;
        let bottleneck = self.path_bottleneck(tail, true, self.arcs[mid as usize].r_cap);
        let bottleneck = self.path_bottleneck(head, false, bottleneck);

        let sister = self.arcs[mid as usize].sister;
        self.arcs[sister as usize].r_cap += bottleneck;
        self.arcs[mid as usize].r_cap -= bottleneck;
        self.push_along_path(tail, true, bottleneck);
        self.push_along_path(head, false, bottleneck);
        self.flow += bottleneck as f64;
    }

    /// The arc carrying flow across tree arc `a` (a node's parent arc): in the source tree flow
    /// runs parent -> child, along sister(a); in the sink tree child -> parent, along `a`.
    fn flow_arc(&self, a: u32, source_tree: bool) -> u32 {
        if source_tree { self.arcs[a as usize].sister } else { a }
    }

    /// `bottleneck` lowered to the residual capacities on the tree path from `start` to its
    /// terminal, the terminal arc included.
    fn path_bottleneck(&self, start: u32, source_tree: bool, mut bottleneck: f32) -> f32 {
        let mut i = start;
        loop {
            let a = self.nodes[i as usize].parent;
            if a == TERMINAL {
                break;
            }
            bottleneck = bottleneck.min(self.arcs[self.flow_arc(a, source_tree) as usize].r_cap);
            i = self.arcs[a as usize].head;
        }
        // tr_cap > 0 is residual source capacity, < 0 residual sink capacity.
        let terminal = self.nodes[i as usize].tr_cap;
        bottleneck.min(if source_tree { terminal } else { -terminal })
    }

    /// Pushes `flow` along the tree path from `start` to its terminal; a node whose arc to its
    /// parent (or terminal) saturates becomes an orphan.
    fn push_along_path(&mut self, start: u32, source_tree: bool, flow: f32) {
        let mut i = start;
        loop {
            let a = self.nodes[i as usize].parent;
            if a == TERMINAL {
                break;
            }
            let along = self.flow_arc(a, source_tree);
            let against = self.arcs[along as usize].sister;
            self.arcs[against as usize].r_cap += flow;
            self.arcs[along as usize].r_cap -= flow;
            let next = self.arcs[a as usize].head;
            if self.arcs[along as usize].r_cap <= 0.0 {
                self.arcs[along as usize].r_cap = 0.0;
                self.make_orphan(i);
            }
            i = next;
        }
        let node = &mut self.nodes[i as usize];
        let saturated = if source_tree {
            node.tr_cap -= flow;
            node.tr_cap <= 0.0
        } else {
            node.tr_cap += flow;
            node.tr_cap >= 0.0
        };
        if saturated {
            node.tr_cap = 0.0;
            self.make_orphan(i);
        }
    }

    fn adopt_orphans(&mut self) {
        while let Some(i) = self.orphans.pop_front() {
            self.adopt(i);
        }
    }

    /// Finds orphan i a new parent in its own tree whose path reaches the terminal, choosing the
    /// shortest; if none exists i becomes free and its children become orphans.
    fn adopt(&mut self, i: u32) {
        let sink = self.nodes[i as usize].in_sink_tree;
        let mut best_arc = NONE;
        let mut best_dist = u32::MAX;
        let mut a0 = self.nodes[i as usize].first;
        while a0 != NONE {
            let arc = self.arcs[a0 as usize];
            // Residual capacity from the candidate parent j towards i (source tree) or from i to j (sink tree).
            let cap = if sink { arc.r_cap } else { self.arcs[arc.sister as usize].r_cap };
            let j = arc.head;
            let nj = self.nodes[j as usize];
            if cap > 0.0
                && nj.in_sink_tree == sink
                && nj.parent != NONE
                && let Some(d) = self.origin_distance(j)
            {
                if d < best_dist {
                    best_arc = a0;
                    best_dist = d;
                }
                // Stamp the path so later searches stop early.
                let mut j = j;
                let mut d = d;
                while self.nodes[j as usize].ts != self.time {
                    let n = &mut self.nodes[j as usize];
                    n.ts = self.time;
                    n.dist = d;
                    d -= 1;
                    j = self.arcs[n.parent as usize].head;
                }
            }
            a0 = arc.next;
        }
        if best_arc != NONE {
            let n = &mut self.nodes[i as usize];
            n.parent = best_arc;
            n.ts = self.time;
            n.dist = best_dist + 1;
            return;
        }
        self.nodes[i as usize].parent = NONE;
        let mut a0 = self.nodes[i as usize].first;
        while a0 != NONE {
            let arc = self.arcs[a0 as usize];
            let j = arc.head;
            let nj = self.nodes[j as usize];
            if nj.in_sink_tree == sink && nj.parent != NONE {
                let cap = if sink { arc.r_cap } else { self.arcs[arc.sister as usize].r_cap };
                if cap > 0.0 {
                    self.set_active(j);
                }
                if nj.parent != TERMINAL && nj.parent != ORPHAN && self.arcs[nj.parent as usize].head == i {
                    self.make_orphan(j);
                }
            }
            a0 = arc.next;
        }
    }

    /// Distance from j to its terminal along parent arcs, or None if the path ends at an orphan.
    fn origin_distance(&mut self, j: u32) -> Option<u32> {
        let mut j = j;
        let mut d = 0u32;
        loop {
            let n = self.nodes[j as usize];
            if n.ts == self.time {
                return Some(d + n.dist);
            }
            let a = n.parent;
            d += 1;
            if a == TERMINAL {
                let n = &mut self.nodes[j as usize];
                n.ts = self.time;
                n.dist = 1;
                return Some(d);
            }
            if a == ORPHAN {
                return None;
            }
            j = self.arcs[a as usize].head;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Capacity of the cut (S = nodes where `side` is true) in the graph described by the lists.
    fn cut_cost(side: &[bool], t: &[(f32, f32)], edges: &[(usize, usize, f32, f32)]) -> f64 {
        let mut c = 0.0f64;
        for (i, &(s, k)) in t.iter().enumerate() {
            c += if side[i] { k as f64 } else { s as f64 };
        }
        for &(i, j, cap, rev) in edges {
            if side[i] && !side[j] {
                c += cap as f64;
            }
            if side[j] && !side[i] {
                c += rev as f64;
            }
        }
        c
    }

    #[test]
    fn maxflow_equals_brute_force_min_cut_on_random_graphs() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for trial in 0..300 {
            let n = rng.random_range(2..=10);
            let integer = trial % 2 == 0;
            let draw = |rng: &mut rand_chacha::ChaCha8Rng, p: f64| -> f32 {
                if !rng.random_bool(p) {
                    0.0
                } else if integer {
                    rng.random_range(1..20) as f32
                } else {
                    rng.random_range(0.01f32..5.0)
                }
            };
            let t: Vec<(f32, f32)> = (0..n).map(|_| (draw(&mut rng, 0.5), draw(&mut rng, 0.5))).collect();
            let mut edges = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    if rng.random_bool(0.4) {
                        edges.push((i, j, draw(&mut rng, 0.9), draw(&mut rng, 0.7)));
                    }
                }
            }
            let mut g = MaxFlow::new(n, edges.len());
            for (i, &(s, k)) in t.iter().enumerate() {
                g.add_tweights(i, s, k);
            }
            for &(i, j, c, r) in &edges {
                g.add_edge(i, j, c, r);
            }
            let flow = g.maxflow();
            let best = (0..1u32 << n)
                .map(|bits| cut_cost(&(0..n).map(|i| bits >> i & 1 == 1).collect::<Vec<_>>(), &t, &edges))
                .fold(f64::INFINITY, f64::min);
            let side: Vec<bool> = (0..n).map(|i| g.in_source_segment(i)).collect();
            let found = cut_cost(&side, &t, &edges);
            let tol = if integer { 0.0 } else { 1e-3 * (1.0 + best) };
            assert!((flow - best).abs() <= tol, "trial {trial}: flow {flow} vs min cut {best}");
            assert!((found - best).abs() <= tol, "trial {trial}: returned cut {found} vs min cut {best}");
        }
    }

    #[test]
    fn reset_reuses_the_graph() {
        let mut g = MaxFlow::new(2, 1);
        g.add_tweights(0, 5.0, 0.0);
        g.add_tweights(1, 0.0, 3.0);
        g.add_edge(0, 1, 2.0, 0.0);
        assert_eq!(g.maxflow(), 2.0);
        assert!(g.in_source_segment(0) && !g.in_source_segment(1));
        g.reset(3);
        g.add_tweights(0, 4.0, 1.0);
        g.add_tweights(2, 0.0, 9.0);
        g.add_edge(0, 1, 7.0, 0.0);
        g.add_edge(1, 2, 6.0, 0.0);
        // 1 shared by source and sink on node 0, plus min(3, 7, 6) through the chain.
        assert_eq!(g.maxflow(), 4.0);
    }
}
