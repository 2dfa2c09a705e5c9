import sys; sys.path.insert(0,'tests')
import noise_distinguishers as N, torch, math, numpy as np
x=N.background_input(784,600).double()
def ang(rows, spacing=2.0**-50):
    v0,v1=N._pairs(rows,600); th=torch.atan2(v1,v0)%(2*math.pi); th=th[(th>=4)&(th<2*math.pi-1e-6)]
    return N._uniform_half_distance_score(N._grid_distance(th,spacing))
def rad(rows, sigma=0.25, spacing=2.0**-53, tmax=0.02):
    v0,v1=N._pairs(rows,600); t=(v0*v0+v1*v1)/(2*sigma*sigma); t=t[t<tmax]
    return N._uniform_half_distance_score(N._grid_distance(-torch.expm1(-t),spacing))
for name,f in [("gauss64",lambda s:N.gaussian_rows(x,0.25,1,s)),("simd64",lambda s:N.engine_rows("numba-simd",x,0.25,1,s)),("torch64",lambda s:N.engine_rows("torch",x,0.25,1,s))]:
    a=[ang(f(s)) for s in range(20)]; r=[rad(f(s)) for s in range(20)]
    print(name,"angle", round(min(a),1), round(sum(a)/len(a),1), "rad", round(min(r),1), round(sum(r)/len(r),1))
