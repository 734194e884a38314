import time, torch, torch.nn.functional as F
from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
from adacluster_core import reference as ref
from adacluster_core.kernels.kmeans_assign import kmeans_assign
from adacluster_core.kernels.centroid_update import centroid_update
from adacluster_core.kernels.cluster_bounds import cluster_bounds
dev="cuda"
torch.manual_seed(0)
for dt in [torch.float32, torch.float16, torch.bfloat16]:
    x=torch.randn(2,3,5000,128,device=dev).to(dt); c=torch.randn(6,200,128,device=dev)
    l,d=kmeans_assign(x,c,return_dist=True); lr,dr=ref.kmeans_assign_ref(x,c,return_dist=True)
    ln=kmeans_assign(x,c,normalize=True); lnr=ref.kmeans_assign_ref(x,c,normalize=True)
    cu,cn=centroid_update(x,l,c); cur,cnr=ref.centroid_update_ref(x,l,c)
    kx,kn=cluster_bounds(x,l,200); kxr,knr=ref.cluster_bounds_ref(x,l,200)
    print(dt,"assign agree",(l==lr).float().mean().item(),"norm agree",(ln==lnr).float().mean().item(),
          "dist err",(d-dr).abs().max().item(),"upd err",(cu-cur).abs().max().item(),"cnt eq",torch.equal(cn,cnr),
          "bounds eq",torch.equal(kx,kxr) and torch.equal(kn,knr))
def rl(a,b): return ((a.double()-b.double()).norm()/b.double().norm()).item()
# accuracy all selected
B,H,N,D=1,4,3000,128
q,k,v=(torch.randn(B,H,N,D,device=dev,dtype=torch.bfloat16) for _ in range(3))
r=ref.dense_attention_ref(q.float(),k.float(),v.float())
o,st=sparse_attention(q,k,v,AdaClusterConfig(min_tokens=0,k_clusters=64,top_k=64))
print("all-selected err",rl(o,r),"sdpa err",rl(F.scaled_dot_product_attention(q,k,v),r),st["attention"],float(st["density"]))
mask=torch.zeros(B,1,N,device=dev); mask[0,0,-30:]=-3.4e38
o,st=sparse_attention(q,k,v,AdaClusterConfig(min_tokens=0,k_clusters=64,top_k=64),always_dense_range=(N-256,N),key_mask=mask)
r=ref.dense_attention_ref(q.float(),k.float(),v.float(),key_mask=mask.unsqueeze(1))
print("masked text err",rl(o,r), st["reason"])
# timing, Wan 1.3B-like
for (B,H,N,D) in [(1,12,32760,128),(2,12,32760,128)]:
    q,k,v=(torch.randn(B,H,N,D,device=dev,dtype=torch.bfloat16) for _ in range(3))
    cfg=AdaClusterConfig(calibration_dense=True)
    s=ClusterState()
    def T(f,n=5):
        f(); torch.cuda.synchronize(); t=time.time()
        for _ in range(n): f()
        torch.cuda.synchronize(); return (time.time()-t)/n*1e3
    t0=time.time(); o,st=sparse_attention(q,k,v,cfg,s); torch.cuda.synchronize(); print("calibration ms",(time.time()-t0)*1e3, st["stage"], st["k_clusters"], st["reason"])
    t0=time.time(); o,st=sparse_attention(q,k,v,cfg,s); torch.cuda.synchronize(); print("first ms",(time.time()-t0)*1e3, st["stage"])
    print("reuse ms",T(lambda: sparse_attention(q,k,v,cfg,s)),"sdpa ms",T(lambda: F.scaled_dot_product_attention(q,k,v)))
    o,st=sparse_attention(q,k,v,cfg,s); print("density",float(st["density"]),st["stage"])
    # breakdown
    from adacluster_core import clustering
    G=B*H; kk=k.reshape(G,N,D)
    cq=s.q_centroids.reshape(G,-1,D); ck=s.k_centroids.reshape(G,-1,D)
    print(" kmeans q 2it ms",T(lambda: clustering.kmeans(q,cq,2,normalize=True,backend="triton")),
          " kmeans k 2it ms",T(lambda: clustering.kmeans(k,ck,2,backend="triton")))
    lab=kmeans_assign(k,ck)
    print(" assign ms",T(lambda: kmeans_assign(k,ck))," update ms",T(lambda: centroid_update(k,lab,ck)),
          " bounds ms",T(lambda: cluster_bounds(k,lab,ck.shape[1])))
