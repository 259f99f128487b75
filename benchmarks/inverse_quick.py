"""Quick measurement of the inverse-problem methods against the exact posterior (not the benchmark tables; the issue-13 benchmark helper builds those)."""
import torch, scoresde as sd, time
from scoresde import ops
sde=sd.VPSDE()
def problems():
    mix=sd.ring8(); op=ops.Mask(torch.tensor([True,False])); y1=torch.tensor([[3.6]])
    yield "ring8 x1=3.6", mix, op, y1
    mix=sd.anisotropic(16,4,seed=0); m=torch.zeros(16,dtype=torch.bool); m[:8]=True; op=ops.Mask(m)
    y1=op.forward((0.475*mix.means[1]+0.525*mix.means[3])[None])
    yield "aniso16 half observed (weights 0.31/0.69)", mix, op, y1
runs=lambda k: [("smc",dict(steps=k)),("smc",dict(steps=k//4,potential="twisted",moves=3,pool=True,particles=100,oversample=8)),("replacement",dict(steps=k//2)),("projection",dict(steps=k,predictor="reverse_diffusion")),
      ("repaint",dict(steps=max(k//10,2))),("dps",dict(steps=k,predictor="reverse_diffusion")),("pigdm",dict(steps=k,predictor="reverse_diffusion"))]
n=2000
for name,mix,op,y1 in problems():
    post=mix.condition(op,y1).prune(1e-6); floor=sd.metrics.exact_floor(post,n)
    print(f"## {name}: posterior weights {post.weights.numpy().round(3).tolist()}, floor(n={n}) {floor:.4f}")
    Y=y1.float().expand(n,-1).clone(); sf=mix.score_fn(sde)
    for k in (100,400):
        for method,kw in runs(k):
            t0=time.time()
            o=sd.sample_posterior(sf,sde,op,Y,nonfinite="count", method=method,generator=torch.Generator().manual_seed(0),**kw)
            st=sd.metrics.mode_w2(o.x,post)
            print(f"{method:12s} {str(kw):45s} nfe {o.nfe:5d} back {o.backward_passes:4d} weight_err {st.weight_error:.3f} W2/floor {st.w2/floor:7.2f} {time.time()-t0:5.1f}s",flush=True)
