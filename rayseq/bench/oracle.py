"""``rayseq bench oracle``: the real ERAC networks and losses against the exact oracle.

A tiny ToySeq-like instance (one source/reference pair: the source is the reference reversed,
symbols 4 … 3 + ``num_symbols``) is small enough for ``envs.oracle`` to enumerate its MDP M_R
(Corollary 1) exactly. The bench trains the project's own networks — the
:class:`~rayseq.models.critic.Critic` (encoder reads y*) and a :class:`~rayseq.models.seq2seq.Seq2Seq`
actor — with the loss functions of :mod:`rayseq.algorithms.erac`, on trajectories sampled from the
actor (:func:`rayseq.decoding.sample`), rewards from :func:`~rayseq.algorithms.erac.token_rewards`
and a Polyak-averaged target critic (:func:`~rayseq.models.critic.make_target`,
:func:`~rayseq.models.critic.polyak_update`), as the distributed learner does; then it compares
with the exact answer:

1. **critic** (actor frozen): TD learning, Eq. (18)/(19) with λ_var = 0, must converge to the
   soft Q^π of the actor (Eq. 9, ``envs.oracle.soft_q_policy``), π read from the actor network at
   every prefix. ``critic_q_rmse`` = RMSE of Q_φ(s, w) − Q^π(s, w) over every non-terminal state
   s and every action w (eos included); ``q_scale`` = max |Q^π|, ``critic_q_rmse_rel`` the ratio;
   ``hard_q_gap`` = RMSE between Q^π with and without the entropy bonus (τ = 0), the error a
   critic ignoring the entropy term would make.
3. **VAML's Q-net** (§4.1, step 1): a fresh critic network trained by soft Q-learning, Eq. (16)
   with V of Eq. (10) and the gradient through both Q and V, on VAML's corrupted references plus
   trajectories of a uniform behaviour policy, must recover Q_R = Q* of Proposition 1:
   ``vaml_q_rmse`` (over every non-terminal state and action) and ``vaml_kl`` = mean
   KL(P_QR ‖ P_Qφ), P = softmax(Q/τ).
2. **joint** ERAC (λ_mle = 0, Eq. 20 as written: ``normalize_logpi_l2=False``), the critic of (1)
   as the pretrained critic: the actor must approach π* = softmax(Q*/τ) = P_QR, Q* =
   ``envs.oracle.soft_q_optimal`` (Proposition 1). ``policy_kl_before`` / ``policy_kl_after`` =
   KL(π* ‖ π_θ) averaged uniformly over **every** non-terminal state (the ``_visited`` variants
   weight the states by π*'s visitation probability instead).

Action space: the symbols and ``<eos>``; ``<pad>``, ``<unk>`` and ``<bos>`` are excluded
consistently (``EXCLUDE``) in sampling, in π and in every loss. The oracle's smoothing and scale
are those of ``token_rewards`` (``plus1``, |y*|); the bench checks that the sampled rewards equal
the oracle's r(s, a) (``reward_max_abs_err``). The horizon is matched as in the module docstring of
``rayseq.algorithms.erac``: ``sample(max_len=T + 1)`` allows T tokens, and a capped sequence ends
at its last token (a prefix of length T is terminal in both).

Optimisation: Adam with the joint-training β = (0, 0.999) of ``ERACConfig``, gradient-norm
clipping, learning rates cosine-decayed to 2 % within each phase (to shrink the sampling noise of
the final estimate), Polyak β = 0.1 (not the official 0.001: a few hundred updates, not epochs).
The critic and actor are small (emb 32, decoder 64) but otherwise the project's classes.
Plain torch; no ray.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from envs.oracle import (
    OracleMDP,
    Prefix,
    QTable,
    boltzmann_policy,
    soft_q_optimal,
    soft_q_policy,
    soft_v,
    soft_v_policy,
)
from rayseq.algorithms.erac import (
    capped_at,
    critic_loss,
    erac_actor_loss,
    gather_actions,
    policy_log_probs,
    soft_td_target,
    soft_value,
    step_masks,
    token_rewards,
)
from rayseq.algorithms.vaml import (
    corrupt_references,
    soft_max_value,
    soft_q_loss,
    soft_q_target,
)
from rayseq.decoding import sample, teacher_forcing_io
from rayseq.models.base import BOS, EOS, PAD, UNK
from rayseq.models.critic import Critic, CriticConfig, make_target, polyak_update
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

EXCLUDE: tuple[int, ...] = (PAD, UNK, BOS)
"""Token ids that are never actions of the oracle MDP (π = 0, no loss, never sampled)."""


@dataclass
class OracleBenchConfig:
    """Settings of ``rayseq bench oracle``; the defaults run in well under a minute on one thread."""

    tau: float = 0.5
    """τ: entropy weight of the actor (Eq. 20), of the critic's target (Eq. 19) and of the oracle."""
    ref: tuple[int, ...] = (4, 5, 6)
    """The reference y* (symbols ≥ 4); the source is its reverse, as in rayseq/ToySeq-v0."""
    num_symbols: int = 3
    """Symbols 4 … 3 + num_symbols; the actions are these plus ``<eos>``."""
    max_len: int = 3
    """Horizon T: at most T tokens, a prefix of length T is terminal."""
    smooth: str = "plus1"
    """BLEU smoothing of the reward (``token_rewards`` and the oracle alike)."""
    scale: str | None = "ref_len"
    """Reward scale (``"ref_len"``: × |y*|, the official reward; None: BLEU in [0, 1])."""
    critic_steps: int = 600
    """Phase 1: critic updates against the frozen actor (TD, Eq. 18/19)."""
    joint_steps: int = 600
    """Phase 2: joint critic + actor updates (ERAC, Eq. 18–20)."""
    batch_size: int = 64
    """Sequences sampled from the actor per update."""
    critic_lr: float = 1e-2
    """Adam learning rate of the critic (both phases; cosine-decayed within each)."""
    actor_lr: float = 3e-3
    """Adam learning rate of the actor (phase 2; cosine-decayed)."""
    adam_betas: tuple[float, float] = (0.0, 0.999)
    """Adam (β1, β2) of both optimisers."""
    beta: float = 0.1
    """β: Polyak rate of the target critic, after every critic update."""
    grad_clip: float = 5.0
    """Max global gradient L2 norm of each network."""
    emb_dim: int = 32
    """Embedding size of actor and critic."""
    hidden: int = 64
    """Decoder LSTM size of actor and critic (the BiLSTM encoder has hidden / 2 per direction)."""
    actor_init_range: float = 0.3
    """U(−r, r) initialisation of the actor (0.1 in the paper; larger gives a less uniform π_θ)."""
    vaml_steps: int = 600
    """Phase 3: VAML Q-net updates (soft Q-learning, Eq. 16)."""
    vaml_lr: float = 1e-2
    """Adam learning rate of the VAML Q-net (cosine-decayed)."""
    vaml_corruptions: int = 31
    """Corrupted references per update (each token replaced w.p. ``vaml_corrupt_prob``), + y* itself."""
    vaml_corrupt_prob: float = 0.2
    """VAML's corruption probability (official 0.2)."""
    vaml_explore: int = 32
    """Trajectories per update from a uniform behaviour policy (soft Q-learning is off-policy; the
    corrupted references alone never take ``<eos>`` early, so Q(s, eos) would stay unfitted)."""
    seed: int = 0
    """Seeds the initialisation and the sampling."""
    num_threads: int | None = 1
    """torch intra-op threads during the run (restored after); None leaves the setting alone."""
    progress: bool = True
    """A tqdm bar per phase on stderr."""


# ============================================================================ exact side


def make_mdp(cfg: OracleBenchConfig) -> OracleMDP:
    """The oracle MDP of the bench: actions = ``<eos>`` + every symbol, the reward of ``token_rewards``."""
    symbols = tuple(range(4, 4 + cfg.num_symbols))
    if not cfg.ref or any(t not in symbols for t in cfg.ref):
        raise ValueError(f"OracleBenchConfig.ref={cfg.ref}: must be non-empty, over the symbols {symbols}")
    return OracleMDP(
        ref=cfg.ref, actions=(EOS, *symbols), max_len=cfg.max_len, smooth=cfg.smooth, scale=cfg.scale
    )


def state_inputs(mdp: OracleMDP) -> tuple[list[Prefix], torch.Tensor, torch.Tensor]:
    """Every non-terminal state as a teacher-forced decoder input.

    Returns ``(states, tgt_in [S, T], pos [S])``: row i is ``<bos> s_i <pad>…`` and the network's
    output at position ``pos[i] = |s_i|`` is the one for state s_i (decoders are causal).
    """
    states = mdp.states()
    tgt_in = torch.full((len(states), mdp.max_len), PAD, dtype=torch.long)
    tgt_in[:, 0] = BOS
    for i, s in enumerate(states):
        tgt_in[i, 1 : 1 + len(s)] = torch.tensor(s, dtype=torch.long)
    pos = torch.tensor([len(s) for s in states], dtype=torch.long)
    return states, tgt_in, pos


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p (log p − log q) in nats, with 0 · log 0 = 0."""
    pos = p > 0
    return float(np.sum(p[pos] * (np.log(p[pos]) - np.log(q[pos]))))


def state_visitation(mdp: OracleMDP, policy: dict[Prefix, np.ndarray]) -> dict[Prefix, float]:
    """Probability that a rollout of ``policy`` passes through each non-terminal state."""
    reach: dict[Prefix, float] = {}
    for s in mdp.states():  # shortest first: a parent is done before its children
        reach[s] = 1.0 if not s else reach[s[:-1]] * float(policy[s[:-1]][mdp.actions.index(s[-1])])
    return reach


def table_rmse(a: QTable, b: QTable) -> float:
    """RMSE over every state and action of two Q tables with the same keys."""
    err = np.concatenate([a[s] - b[s] for s in a])
    return float(np.sqrt(np.mean(err**2)))


# ============================================================================ network side


class Bench:
    """The tiny actor, critic and target critic of the bench, with their inputs."""

    def __init__(self, cfg: OracleBenchConfig, mdp: OracleMDP) -> None:
        self.cfg, self.mdp = cfg, mdp
        vocab = 4 + cfg.num_symbols
        torch.manual_seed(cfg.seed)
        self.actor = Seq2Seq(
            Seq2SeqConfig(
                src_vocab_size=vocab, tgt_vocab_size=vocab, emb_dim=cfg.emb_dim,
                enc_hidden=cfg.hidden // 2, dec_hidden=cfg.hidden, dropout=0.0,
                init_range=cfg.actor_init_range,
            )
        )
        self.critic = Critic(
            CriticConfig(vocab_size=vocab, emb_dim=cfg.emb_dim, enc_hidden=cfg.hidden // 2, dec_hidden=cfg.hidden)
        )
        self.target = make_target(self.critic)
        self.actor.eval()  # dropout 0 anyway; sampling and the loss see the same π
        self.critic.train()
        self.src = torch.tensor([list(reversed(mdp.ref))], dtype=torch.long)  # [1, S]
        self.src_len = torch.tensor([len(mdp.ref)])
        self.ref = torch.tensor([list(mdp.ref)], dtype=torch.long)  # [1, R]
        self.ref_len = torch.tensor([len(mdp.ref)])
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.states, self.state_in, self.state_pos = state_inputs(mdp)
        self.action_ids = torch.tensor(mdp.actions, dtype=torch.long)

    # ------------------------------------------------------------------ forward passes

    def actor_logits(self, tgt_in: torch.Tensor) -> torch.Tensor:
        """Actor logits ``[N, T, V]`` for N decoder inputs, all for the bench's one source."""
        enc = self.actor.expand_encoder(self.actor.encode(self.src, self.src_len), tgt_in.size(0))
        return self.actor.decode(enc, tgt_in)

    def q_values(self, net: Critic, tgt_in: torch.Tensor) -> torch.Tensor:
        """Q(s_t, ·; y*) ``[N, T, V]`` of ``net`` (critic or target) for N decoder inputs."""
        enc = net.expand_encoder(net.encode(self.ref, self.ref_len), tgt_in.size(0))
        return net.decode(enc, tgt_in)

    @torch.no_grad()
    def _at_states(self, out: torch.Tensor) -> dict[Prefix, np.ndarray]:
        """Rows of a ``[S, T, V]`` output at each state's position, restricted to the actions."""
        rows = out[torch.arange(len(self.states)), self.state_pos][:, self.action_ids]  # [S, A]
        arr = rows.double().numpy()
        return {s: arr[i] for i, s in enumerate(self.states)}

    @torch.no_grad()
    def actor_policy(self) -> dict[Prefix, np.ndarray]:
        """π_θ(· | s) over ``mdp.actions`` at every non-terminal state (float64, sums to 1)."""
        logp = policy_log_probs(self.actor_logits(self.state_in).double(), EXCLUDE)  # [S, T, V]
        return self._at_states(logp.exp())

    @torch.no_grad()
    def critic_q(self) -> QTable:
        """Q_φ(s, ·) over ``mdp.actions`` at every non-terminal state."""
        return self._at_states(self.q_values(self.critic, self.state_in))

    # ------------------------------------------------------------------ sampled batch

    @torch.no_grad()
    def sample_batch(self) -> dict[str, torch.Tensor]:
        """``batch_size`` sequences from π_θ in the ERAC step layout (see ``rayseq.algorithms.erac``)."""
        steps = self.mdp.max_len + 1  # decoder steps, eos included: at most max_len tokens
        tokens, lengths, _ = sample(
            self.actor, self.src, self.src_len, steps, num_samples=self.cfg.batch_size,
            generator=self.gen, banned=EXCLUDE,
        )
        tgt_in, tgt_out = teacher_forcing_io(tokens, lengths)  # [N, T]
        width = tgt_in.size(1)
        mask, done = step_masks(lengths, capped_at(lengths, steps), width)
        refs = [self.mdp.ref] * tokens.size(0)
        rewards = token_rewards(tokens, lengths, refs, width, self.cfg.smooth, self.cfg.scale)
        return {
            "tokens": tokens, "lengths": lengths, "tgt_in": tgt_in, "tgt_out": tgt_out,
            "mask": mask, "done": done, "rewards": rewards,
        }

    def reward_error(self, batch: dict[str, torch.Tensor]) -> float:
        """Max |r_t − oracle r(s_t, a_t)| over the steps of a sampled batch."""
        worst = 0.0
        for i in range(batch["tokens"].size(0)):
            seq = tuple(batch["tokens"][i, : int(batch["lengths"][i])].tolist())
            for t in range(batch["tgt_in"].size(1)):
                if batch["mask"][i, t]:
                    r = self.mdp.reward(seq[:t], int(batch["tgt_out"][i, t]))
                    worst = max(worst, abs(float(batch["rewards"][i, t]) - r))
        return worst

    # ------------------------------------------------------------------ updates

    def critic_update(self, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> float:
        """One TD step (Eq. 18/19, λ_var = 0) against π_θ, then the Polyak update of the target."""
        tgt_in, mask = batch["tgt_in"], batch["mask"]
        with torch.no_grad():
            logp = policy_log_probs(self.actor_logits(tgt_in), EXCLUDE)  # [N, T, V]
            v_bar = soft_value(self.q_values(self.target, tgt_in), logp, self.cfg.tau, mask)  # [N, T]
        q_hat = soft_td_target(batch["rewards"], v_bar, batch["done"], mask)  # Eq. (19)
        q_all = self.q_values(self.critic, tgt_in)  # [N, T, V]
        out = critic_loss(gather_actions(q_all, batch["tgt_out"]), q_hat, q_all, mask, 0.0, EXCLUDE)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip)
        opt.step()
        polyak_update(self.target, self.critic, self.cfg.beta)
        return float(out.td.detach())

    def vaml_batch(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """VAML step 1's trajectories: y*, ``vaml_corruptions`` corrupted copies of it (truncated to
        the horizon), and ``vaml_explore`` sequences of a uniform policy over ``mdp.actions``."""
        cfg, mdp = self.cfg, self.mdp
        vocab = 4 + cfg.num_symbols
        seqs = [tuple(y[: mdp.max_len].tolist()) for y in corrupt_references(
            np.array(mdp.ref), vocab, cfg.vaml_corruptions, cfg.vaml_corrupt_prob, rng, n_specials=4)]
        for _ in range(cfg.vaml_explore):
            seq: list[int] = []
            while len(seq) < mdp.max_len:
                a = int(mdp.actions[rng.integers(len(mdp.actions))])
                if a == EOS:
                    break
                seq.append(a)
            seqs.append(tuple(seq))
        lengths = torch.tensor([len(y) for y in seqs])
        tokens = torch.full((len(seqs), max(1, int(lengths.max()))), PAD, dtype=torch.long)
        for i, y in enumerate(seqs):
            tokens[i, : len(y)] = torch.tensor(y, dtype=torch.long)
        tgt_in, tgt_out = teacher_forcing_io(tokens, lengths)
        width = tgt_in.size(1)
        mask, done = step_masks(lengths, lengths >= mdp.max_len, width)  # a prefix of length T is terminal
        rewards = token_rewards(tokens, lengths, [mdp.ref] * len(seqs), width, cfg.smooth, cfg.scale)
        return {"tgt_in": tgt_in, "tgt_out": tgt_out, "mask": mask, "done": done, "rewards": rewards}

    def vaml_update(self, qnet: Critic, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> float:
        """One step of soft Q-learning, Eq. (16) with V of Eq. (10), the gradient through Q and V."""
        q_all = self.q_values(qnet, batch["tgt_in"])  # [N, T, V]
        values = soft_max_value(q_all, self.cfg.tau, EXCLUDE)  # Eq. (10), [N, T]
        target = soft_q_target(batch["rewards"], values, batch["done"], batch["mask"])
        out = soft_q_loss(gather_actions(q_all, batch["tgt_out"]), target, batch["mask"])
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(qnet.parameters(), self.cfg.grad_clip)
        opt.step()
        return float(out.loss.detach())

    def actor_update(self, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> float:
        """One step of Eq. (20), λ_mle = 0, no L2 normalisation of log π, Q from the critic."""
        tgt_in = batch["tgt_in"]
        with torch.no_grad():
            q = self.q_values(self.critic, tgt_in)
        out = erac_actor_loss(
            self.actor_logits(tgt_in), q, batch["mask"], self.cfg.tau, lambda_mle=0.0,
            normalize_logpi_l2=False, exclude=EXCLUDE,
        )
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.grad_clip)
        opt.step()
        return float(out.objective.detach())


def _adam(params, lr: float, betas: tuple[float, float], steps: int):
    opt = torch.optim.Adam(params, lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=0.02 * lr)
    return opt, sched


def _mean_kl(pi_star: dict[Prefix, np.ndarray], pi: dict[Prefix, np.ndarray],
             weight: dict[Prefix, float] | None = None) -> float:
    """Mean of KL(π*(·|s) ‖ π(·|s)) over the states, uniform or weighted by ``weight``."""
    kls = np.array([kl_divergence(pi_star[s], pi[s]) for s in pi_star])
    if weight is None:
        return float(kls.mean())
    w = np.array([weight[s] for s in pi_star])
    return float(np.sum(w * kls) / np.sum(w))


# ============================================================================ the bench


def run(cfg: OracleBenchConfig | None = None) -> dict:
    """Run both phases; returns a JSON-safe dict (see the module docstring for the figures)."""
    cfg = cfg or OracleBenchConfig()
    if not cfg.tau > 0:
        raise ValueError(f"OracleBenchConfig.tau={cfg.tau}: must be > 0 (π* = softmax(Q*/τ)).")
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: OracleBenchConfig) -> dict:
    start = time.perf_counter()
    mdp = make_mdp(cfg)
    b = Bench(cfg, mdp)

    # Exact references.
    q_star = soft_q_optimal(mdp, cfg.tau)
    pi_star = {s: boltzmann_policy(q, cfg.tau) for s, q in q_star.items()}
    reach_star = state_visitation(mdp, pi_star)
    pi_0 = b.actor_policy()
    q_pi0 = soft_q_policy(mdp, cfg.tau, lambda s: pi_0[s])
    q_pi0_hard = soft_q_policy(mdp, 0.0, lambda s: pi_0[s])
    q_scale = float(max(np.abs(q).max() for q in q_pi0.values()))  # max |Q^π| of the table fitted
    kl_before = _mean_kl(pi_star, pi_0)
    kl_before_visited = _mean_kl(pi_star, pi_0, reach_star)
    critic_rmse_init = table_rmse(b.critic_q(), q_pi0)

    # Phase 1: the critic learns Q^π of the frozen actor.
    reward_err = 0.0
    opt_c, sched_c = _adam(b.critic.parameters(), cfg.critic_lr, cfg.adam_betas, cfg.critic_steps)
    bar = tqdm(range(cfg.critic_steps), desc="oracle: critic", unit="step", file=sys.stderr,
               disable=not cfg.progress, leave=False)
    for step in bar:
        batch = b.sample_batch()
        if step < 5:
            reward_err = max(reward_err, b.reward_error(batch))
        td = b.critic_update(batch, opt_c)
        sched_c.step()
        if step % 50 == 0:
            bar.set_postfix(td=f"{td:.2e}")
    bar.close()
    critic_t = time.perf_counter() - start
    critic_rmse = table_rmse(b.critic_q(), q_pi0)

    # Phase 2: joint ERAC, starting from the pretrained critic.
    opt_c, sched_c = _adam(b.critic.parameters(), cfg.critic_lr, cfg.adam_betas, cfg.joint_steps)
    opt_a, sched_a = _adam(b.actor.parameters(), cfg.actor_lr, cfg.adam_betas, cfg.joint_steps)
    bar = tqdm(range(cfg.joint_steps), desc="oracle: joint", unit="step", file=sys.stderr,
               disable=not cfg.progress, leave=False)
    for step in bar:
        batch = b.sample_batch()
        td = b.critic_update(batch, opt_c)
        b.actor_update(batch, opt_a)
        sched_c.step()
        sched_a.step()
        if step % 50 == 0:
            bar.set_postfix(td=f"{td:.2e}")
    bar.close()
    pi_1 = b.actor_policy()
    q_pi1 = soft_q_policy(mdp, cfg.tau, lambda s: pi_1[s])
    root: Prefix = ()

    # Phase 3: VAML's Q-net (a fresh critic network) learns Q_R = Q* by soft Q-learning.
    vocab = 4 + cfg.num_symbols
    torch.manual_seed(cfg.seed + 3)
    qnet = Critic(CriticConfig(vocab_size=vocab, emb_dim=cfg.emb_dim, enc_hidden=cfg.hidden // 2, dec_hidden=cfg.hidden))
    rng = np.random.default_rng(cfg.seed + 3)
    with torch.no_grad():
        vaml_rmse_init = table_rmse(b._at_states(b.q_values(qnet, b.state_in)), q_star)
    opt_q, sched_q = _adam(qnet.parameters(), cfg.vaml_lr, (0.9, 0.999), cfg.vaml_steps)
    t_vaml = time.perf_counter()
    bar = tqdm(range(cfg.vaml_steps), desc="oracle: VAML Q-net", unit="step", file=sys.stderr,
               disable=not cfg.progress, leave=False)
    for step in bar:
        loss = b.vaml_update(qnet, b.vaml_batch(rng), opt_q)
        sched_q.step()
        if step % 50 == 0:
            bar.set_postfix(td=f"{loss:.2e}")
    bar.close()
    with torch.no_grad():
        q_phi = b._at_states(b.q_values(qnet, b.state_in))
    p_qphi = {s: boltzmann_policy(q, cfg.tau) for s, q in q_phi.items()}
    return {
        "critic_q_rmse": critic_rmse,
        "critic_q_rmse_rel": critic_rmse / q_scale,
        "critic_q_rmse_init": critic_rmse_init,
        "hard_q_gap": table_rmse(q_pi0_hard, q_pi0),
        "policy_kl_before": kl_before,
        "policy_kl_after": _mean_kl(pi_star, pi_1),
        "policy_kl_before_visited": kl_before_visited,
        "policy_kl_after_visited": _mean_kl(pi_star, pi_1, reach_star),
        "policy_kl_states": "all non-terminal states, uniform (the _visited keys: weighted by π* visitation)",
        "joint_critic_q_rmse": table_rmse(b.critic_q(), q_pi1),
        "soft_value_optimal": float(soft_v(q_star[root], cfg.tau)),
        "soft_value_before": soft_v_policy(q_pi0[root], pi_0[root], cfg.tau),
        "soft_value_after": soft_v_policy(q_pi1[root], pi_1[root], cfg.tau),
        "vaml_q_rmse": table_rmse(q_phi, q_star),
        "vaml_q_rmse_init": vaml_rmse_init,
        "vaml_q_rmse_rel": table_rmse(q_phi, q_star) / float(max(np.abs(q).max() for q in q_star.values())),
        "vaml_kl": _mean_kl(pi_star, p_qphi),
        "vaml_kl_visited": _mean_kl(pi_star, p_qphi, reach_star),
        "vaml_kl_states": "KL(P_QR ‖ P_Qφ), P = softmax(Q/τ) over the actions, mean over all non-terminal states",
        "vaml_steps": cfg.vaml_steps,
        "vaml_wall_s": time.perf_counter() - t_vaml,
        "reward_max_abs_err": reward_err,
        "q_scale": q_scale,
        "num_states": len(b.states),
        "num_actions": len(mdp.actions),
        "tau": cfg.tau,
        "critic_steps": cfg.critic_steps,
        "joint_steps": cfg.joint_steps,
        "batch_size": cfg.batch_size,
        "critic_wall_s": critic_t,
        "wall_s": time.perf_counter() - start,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def main() -> None:
    """``python -m rayseq.bench.oracle``: run with the defaults and print one JSON line."""
    import json

    print(json.dumps(run(OracleBenchConfig())))


if __name__ == "__main__":
    main()
